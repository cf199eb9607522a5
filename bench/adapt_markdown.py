"""bench_adapt.py's results as the Markdown of bench/results/adapt.md (figures from the run only)."""
from __future__ import annotations

import json
import time


def markdown(results: dict, argv: list[str]) -> str:
    lines = ["# adapt (issue 10)", "", f"`.venv/bin/python bench/bench_adapt.py {' '.join(argv)}`",
             f"({time.strftime('%Y-%m-%d %H:%M')} UTC, shared 2-core VM, other jobs running; one torch thread)", ""]
    if "digits" in results:
        r = results["digits"]
        lines += ["## Digits CNN (2 conv 3x3 + BatchNorm + ReLU, MaxPool 2, dense 64 ReLU)", "",
                  "| figure | value | target |", "|---|---:|---|",
                  f"| original, plaintext test accuracy ({r['test']} images) | {r['accuracy_original_plain']:.4f} | |",
                  f"| adapted, plaintext test accuracy | {r['accuracy_adapted_plain']:.4f} | |",
                  f"| adapted, ENCRYPTED test accuracy ({r['encrypted_test']} images) | {r['accuracy_adapted_encrypted']:.4f} | within 0.010 of {r['accuracy_original_plain_same_frames']:.4f} |",
                  f"| top-1 agreement, encrypted adapted vs original | {r['agreement_encrypted_vs_original']:.4f} | >= 0.98 |",
                  f"| protect's fidelity check (max error / output range) | {r['fidelity_rel_error']:.2e} | <= 1e-2 |",
                  f"| adapt wall time | {r['adapt_seconds']:.0f} s | <= 300 s |",
                  f"| encrypted latency, median ms wall (CPU): adapted / square-activation same shape | {r['median_ms']['adapted']:.0f} ({r['median_ms'].get('adapted cpu', 0):.0f}) / {r['median_ms']['square']:.0f} ({r['median_ms'].get('square cpu', 0):.0f}) | adapted <= square |",
                  f"| estimated ms (protect's cost model): adapted / square | {r['estimated_ms_adapted']:.0f} / {r['estimated_ms_square']:.0f} | |",
                  f"| square-activation model's plaintext accuracy (for reference) | {r['accuracy_square_plain']:.4f} | |",
                  "", f"adapt's held-back report: `{json.dumps(r['held_back'])}`; plans: adapted `{json.dumps(r['depth'])}`, "
                  f"original with protect's fits `{json.dumps(r['plan_original'])}`", ""]
    if "crowd" in results:
        r = results["crowd"]
        lines += ["## Crowd model, ReLU version (Conv 5x5 s2 + BN + ReLU, AvgPool, Gemm 32 + BN + ReLU, Gemm 2)", "",
                  f"Trained and adapted on rendered scenes; adapt with their count labels: {r.get('labels', False)}.", "",
                  "| figure | value | target |", "|---|---:|---|",
                  f"| count MAE on {r['heldout']} held-out frames: original / adapted (plaintext) | {r['count_mae_original']:.3f} / {r['count_mae_adapted']:.3f} | adapted within 5% |",
                  f"| adapted count MAE by adapt seed ({', '.join(f'{k}: {v:.3f}' for k, v in sorted(r['count_mae_adapted_by_seed'].items()))}): median | {r['count_mae_adapted_median']:.3f} | |",
                  f"| count MAE on {r['encrypted_frames']} of them: original plaintext / adapted ENCRYPTED | {r['count_mae_original_encrypted_frames']:.3f} / {r['count_mae_adapted_encrypted']:.3f} | |",
                  f"| protect's fidelity check | {r['fidelity_rel_error']:.2e} | <= 1e-2 |",
                  f"| adapt wall time ({r['train']} frames) | {r['adapt_seconds']:.0f} s | <= 300 s |",
                  f"| encrypted latency, median ms wall (CPU): adapted / shipped square model | {r['median_ms']['adapted']:.0f} ({r['median_ms'].get('adapted cpu', 0):.0f}) / {r['median_ms']['square (shipped)']:.0f} ({r['median_ms'].get('square (shipped) cpu', 0):.0f}) | adapted <= square |",
                  f"| estimated ms: adapted / shipped square | {r['estimated_ms_adapted']:.0f} / {r['estimated_ms_square']:.0f} | |",
                  "", f"held-back report: `{json.dumps(r['held_back'])}`", ""]
    if "crowd-real" in results:
        r = results["crowd-real"]
        o, a, m = r["count_mae_original"], r["count_mae_adapted"], r["count_mae_adapted_median"]
        pct = lambda v, k: f"{100 * (v / o[k] - 1):+.1f}%"  # noqa: E731
        seeds = "; ".join(f"seed {s}: " + " / ".join(f"{v[k]:.3f}" for k in o) for s, v in sorted(r["count_mae_adapted_by_seed"].items()))
        lines += ["## Crowd model, ReLU version trained the shipped way on real Mall frames", "",
                  f"Original `{r['original']}` ({r['original_epochs']} epochs of training.fit.train); adapt with "
                  f"{r['train']} inputs ({r['train_real']} real, {r['train_rendered']} rendered), labels: {r['labels']}; "
                  f"held-out real frames 641-800 ({r['heldout']}), motion zero / 0.5 s.", "",
                  "| figure | value | target |", "|---|---:|---|",
                  f"| count MAE, original (zero / 0.5 s motion) | {o['no_motion']:.3f} / {o['motion_0.5s']:.3f} | |",
                  f"| count MAE, adapted seed {r['adapt_seed']} (plaintext) | {a['no_motion']:.3f} ({pct(a['no_motion'], 'no_motion')}) / {a['motion_0.5s']:.3f} ({pct(a['motion_0.5s'], 'motion_0.5s')}) | within 5% |",
                  f"| adapted by seed ({seeds}): median | {m['no_motion']:.3f} ({pct(m['no_motion'], 'no_motion')}) / {m['motion_0.5s']:.3f} ({pct(m['motion_0.5s'], 'motion_0.5s')}) | |",
                  f"| kept epoch (lowest held-back loss) | {r['kept_epoch']} of {r['epochs']} | |",
                  f"| adapt wall time ({r['train']} inputs) | {r['adapt_seconds']:.0f} s | <= 300 s |"]
        if "protect_error" in r:
            lines += [f"| protect | **failed**: {r['protect_error']} | |"]
        elif "fidelity_rel_error" in r:
            lines += [
                  f"| count MAE on {r['encrypted_frames']} frames (zero motion): original plain / adapted plain / adapted ENCRYPTED | {r['count_mae_original_encrypted_frames']:.3f} / {r['count_mae_adapted_plain_encrypted_frames']:.3f} / {r['count_mae_adapted_encrypted']:.3f} | |",
                  f"| largest abs. difference encrypted - plaintext, count | {r['max_abs_count_encrypted_minus_plain']:.4f} | |",
                  f"| protect's fidelity check | {r['fidelity_rel_error']:.2e} | <= 1e-2 |",
                  f"| encrypted latency, median ms wall (CPU): adapted / shipped square model | {r['median_ms']['adapted']:.0f} ({r['median_ms'].get('adapted cpu', 0):.0f}) / {r['median_ms']['square (shipped)']:.0f} ({r['median_ms'].get('square (shipped) cpu', 0):.0f}) | adapted <= square |",
                  f"| estimated ms: adapted / shipped square | {r['estimated_ms_adapted']:.0f} / {r['estimated_ms_square']:.0f} | |"]
        lines += ["", f"held-back report: `{json.dumps(r['held_back'])}`", ""]
    return "\n".join(lines)
