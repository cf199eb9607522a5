"""How noisy the rendered-scene incident recall is, and whether one model's recall is really
below another's: `python -m training.eval_spread --model NEW --model OLD`.

The card's recall figures come from one held-out set (training/eval.py: 120 sequences from
HELDOUT_SEED_BASE). A sequence is one scene: its frames are far from independent (a fall is seen
or missed for most of its frames at once), so the spread is measured over sequences:
- on further disjoint held-out sets of the same size (seeds after the card's set), and
- by a bootstrap over the sequences of each set (resampling whole sequences), with the paired
  difference between two models on the same resampled sequences.
A model can buy recall with false alarms (a lower threshold), so each set also gives every
model's recall at the threshold where its false-alarm rate on calm/crowd frames equals the last
model's at logit 0 ("at equal false alarms"): what the ranking is without that trade.
Prints a table and, with --json, writes every figure. `--cache` keeps the rendered sets (an .npz).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from training.eval import HELDOUT_SEED_BASE, heldout_set, model_input_size, predict_onnx

KINDS = ("dispersal", "fall")
BOOTSTRAP = 2000


def rendered_sets(n_sets: int, n_sequences: int, input_size, cache: str | None, workers: int = 2):
    """Held-out rows of n_sets x n_sequences sequences (160x120, 100 frames): x, incident, kind, seq."""
    key = f"{n_sets}-{n_sequences}-{tuple(input_size)}"
    path = Path(cache) if cache else None
    if path and path.is_file():
        z = np.load(path, allow_pickle=False)
        if str(z["key"]) == key:
            return {k: z[k] for k in ("x", "incident", "kind", "seq")}
    n_frames = 100
    d = heldout_set(n_sets * n_sequences, n_frames, workers=workers, input_size=tuple(input_size))
    if len(d) != n_sets * n_sequences * n_frames:
        raise RuntimeError(f"expected {n_frames} rows per held-out sequence, got {len(d)} rows")
    out = {"x": d.x, "incident": d.incident, "kind": d.kind,
           "seq": np.repeat(np.arange(n_sets * n_sequences), n_frames)}
    if path:
        np.savez(path, key=key, **out)
    return out


def per_sequence_hits(pred: np.ndarray, truth: np.ndarray, kind: np.ndarray, seq: np.ndarray, k: str):
    """Per sequence: (detected incident frames, incident frames) of kind k (sequences without any: 0, 0)."""
    n = int(seq.max()) + 1
    m = truth & (kind == k)
    return (np.bincount(seq[m & pred], minlength=n).astype(float), np.bincount(seq[m], minlength=n).astype(float))


def recall_spread(logits: dict[str, np.ndarray], data: dict, n_sets: int, n_sequences: int, seed: int = 0) -> dict:
    """Per set and model: recall by kind at logit > 0, its bootstrap 95% interval over sequences,
    the recall at equal false alarms, and the paired bootstrap of (model 0 - model j)."""
    truth = data["incident"] > 0.5
    names = list(logits)
    preds = {n: v > 0 for n, v in logits.items()}
    rng = np.random.default_rng(seed)
    res = {"sets": []}
    for s in range(n_sets):
        lo, hi = s * n_sequences, (s + 1) * n_sequences
        rows = (data["seq"] >= lo) & (data["seq"] < hi)
        seq = data["seq"][rows] - lo
        boot = rng.integers(0, n_sequences, (BOOTSTRAP, n_sequences))
        entry = {"first_seed": HELDOUT_SEED_BASE + lo, "sequences": n_sequences, "models": {}, "paired": {}}
        hits = {}
        for name in names:
            p = preds[name][rows]
            entry["models"][name] = m = {}
            for k in KINDS:
                h, t = per_sequence_hits(p, truth[rows], data["kind"][rows], seq, k)
                hits[name, k] = (h, t)
                br = h[boot].sum(1) / np.maximum(t[boot].sum(1), 1)
                m[k] = {"recall": float(h.sum() / max(t.sum(), 1)), "frames": int(t.sum()),
                        "sequences": int((t > 0).sum()), "ci95": [float(np.percentile(br, 2.5)), float(np.percentile(br, 97.5))]}
            calm = np.isin(data["kind"][rows], ["calm", "crowd"])
            m["false_alarm_rate"] = float(p[calm].mean())
        calm = np.isin(data["kind"][rows], ["calm", "crowd"])
        ref_fa = float(preds[names[-1]][rows][calm].mean())
        for name in names:
            lg = logits[name][rows]
            thr = float(np.quantile(lg[calm], 1.0 - ref_fa))
            for k in KINDS:
                pos = truth[rows] & (data["kind"][rows] == k)
                entry["models"][name][k]["recall_at_equal_false_alarms"] = float((lg[pos] > thr).mean())
        for other in names[1:]:
            entry["paired"][f"{names[0]} - {other}"] = pair = {}
            for k in KINDS:
                (ha, t), (hb, _) = hits[names[0], k], hits[other, k]
                diff = (ha[boot].sum(1) - hb[boot].sum(1)) / np.maximum(t[boot].sum(1), 1)
                pair[k] = {"diff": float((ha.sum() - hb.sum()) / max(t.sum(), 1)),
                           "ci95": [float(np.percentile(diff, 2.5)), float(np.percentile(diff, 97.5))],
                           "share_below_0": float((diff < 0).mean())}
        res["sets"].append(entry)
    for name in names:        # all sets pooled: the figure with the least noise
        res.setdefault("pooled", {})[name] = {
            k: float(sum(e["models"][name][k]["recall"] * e["models"][name][k]["frames"] for e in res["sets"])
                     / max(sum(e["models"][name][k]["frames"] for e in res["sets"]), 1)) for k in KINDS}
    return res


def spread_of(models: list, n_sets: int, n_sequences: int, cache: str | None = None, workers: int = 2) -> dict:
    """recall_spread of ONNX models (the first against the others) on n_sets held-out sets."""
    sizes = {m: model_input_size(m) for m in models}
    data = {}           # the same seeded scenes at each model's input size (labels do not depend on it)
    for size in dict.fromkeys(sizes.values()):
        one = cache if len(set(sizes.values())) == 1 else (f"{cache}.{size[0]}x{size[1]}.npz" if cache else None)
        data[size] = rendered_sets(n_sets, n_sequences, size, one, workers)
    names = [Path(m).name for m in models]
    logits = {(n if names.count(n) == 1 else str(m)): predict_onnx(m, data[sizes[m]]["x"])[:, 1]
              for n, m in zip(names, models)}
    return recall_spread(logits, data[sizes[models[0]]], n_sets, n_sequences)


def format_spread(res: dict) -> str:
    lines = ["| set (first seed) | model | recall dispersal [95% CI] | recall fall [95% CI] | false alarms "
             "| recall dispersal / fall at equal false alarms |",
             "|---|---|---|---|---|---|"]
    for e in res["sets"]:
        for name, m in e["models"].items():
            cells = [f"{m[k]['recall']:.3f} [{m[k]['ci95'][0]:.2f}, {m[k]['ci95'][1]:.2f}] ({m[k]['sequences']} seq)"
                     for k in KINDS]
            eq = " / ".join(f"{m[k]['recall_at_equal_false_alarms']:.3f}" for k in KINDS)
            lines.append(f"| {e['first_seed']} | {name} | {cells[0]} | {cells[1]} | {m['false_alarm_rate']:.3f} | {eq} |")
        for pair, d in e["paired"].items():
            cells = [f"{d[k]['diff']:+.3f} [{d[k]['ci95'][0]:+.2f}, {d[k]['ci95'][1]:+.2f}]" for k in KINDS]
            lines.append(f"| {e['first_seed']} | {pair} (paired) | {cells[0]} | {cells[1]} | | |")
    for name, r in res.get("pooled", {}).items():
        lines.append(f"| all sets pooled | {name} | {r['dispersal']:.3f} | {r['fall']:.3f} | | |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="spread of the rendered-scene incident recall over held-out sets")
    ap.add_argument("--model", action="append", required=True, help="ONNX model (repeatable; the first is compared to the others)")
    ap.add_argument("--sets", type=int, default=4, help="disjoint held-out sets (the first is the card's)")
    ap.add_argument("--sequences", type=int, default=120, help="sequences per set")
    ap.add_argument("--cache", help="an .npz to keep the rendered sets in")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    res = spread_of(args.model, args.sets, args.sequences, args.cache, args.workers)
    print(format_spread(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
