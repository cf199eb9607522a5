"""Measure a crowd-and-incident ONNX model on held-out synthetic sequences (onnxruntime);
with --json also on the held-out real frames (training/eval_real.py).

    python -m training.eval --model models/crowd_incident.onnx --sequences 120 --json models/crowd_incident.metrics.json

Held-out seeds start at HELDOUT_SEED_BASE, far from the training seeds. Motion is computed at the
nominal frame interval (gap 1). `metrics(outputs, data)` takes any (N, 2) outputs, so the same
numbers can be computed from decrypted encrypted-inference results.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from training.dataset import LabelledSet, synthetic_set

HELDOUT_SEED_BASE = 1_000_000
QUICK_SEQUENCES = 12          # the small held-out set the test suite re-measures (160x120)
# issue 11's yardstick: the shipped model before it (rendered scenes only), kept for comparison
REFERENCE_MODEL = Path(__file__).resolve().parent / "data" / "reference" / "crowd_incident_rendered_only.onnx"


def heldout_set(n_sequences: int, n_frames: int = 100, width: int = 160, height: int = 120,
                workers: int = 2, first: int = 0, input_size: tuple[int, int] = (32, 32)) -> LabelledSet:
    seeds = range(HELDOUT_SEED_BASE + first, HELDOUT_SEED_BASE + first + n_sequences)
    return synthetic_set(seeds, n_frames=n_frames, width=width, height=height, max_gap=1, workers=workers,
                         input_size=input_size)


def model_input_size(model_path: str | Path) -> tuple[int, int]:
    """(H, W) of the model's (1, 2, H, W) input."""
    import onnx
    dims = onnx.load(str(model_path)).graph.input[0].type.tensor_type.shape.dim
    return int(dims[2].dim_value), int(dims[3].dim_value)


def predict_onnx(model_path: str | Path, x: np.ndarray) -> np.ndarray:
    """Run the (batch-1) model on every row of x: (N, 2, H, W) -> (N, 2)."""
    import onnxruntime as ort
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])


def metrics(outputs: np.ndarray, data: LabelledSet) -> dict:
    """Count MAE (people) and incident precision/recall at logit > 0, overall and per scenario kind."""
    outputs = np.asarray(outputs, np.float64)
    if outputs.shape != (len(data), 2):
        raise ValueError(f"outputs must be ({len(data)}, 2), got {outputs.shape}")
    err = np.abs(outputs[:, 0] - data.count)
    pred = outputs[:, 1] > 0
    truth = data.incident > 0.5
    tp, fp, fn = int((pred & truth).sum()), int((pred & ~truth).sum()), int((~pred & truth).sum())
    out = {
        "frames": int(len(data)),
        "count_mae": float(err.mean()),
        "count_mean": float(data.count.mean()),
        "count_mae_by_kind": {k: float(err[data.kind == k].mean()) for k in sorted(set(data.kind))},
        "incident_frames": int(truth.sum()),
        "incident_precision": tp / (tp + fp) if tp + fp else 1.0,
        "incident_recall": tp / (tp + fn) if tp + fn else 1.0,
        "incident_recall_by_kind": {},
        "false_alarm_rate_no_incident_kinds": float(pred[np.isin(data.kind, ["calm", "crowd"])].mean())
        if np.isin(data.kind, ["calm", "crowd"]).any() else 0.0,
    }
    for k in ("dispersal", "fall"):
        m = truth & (data.kind == k)
        if m.any():
            out["incident_recall_by_kind"][k] = float(pred[m].mean())
    return out


def evaluate(model_path: str | Path, n_sequences: int, width: int = 160, height: int = 120,
             n_frames: int = 100, workers: int = 2) -> dict:
    data = heldout_set(n_sequences, n_frames, width, height, workers, input_size=model_input_size(model_path))
    res = metrics(predict_onnx(model_path, data.x), data)
    res.update(sequences=n_sequences, resolution=f"{width}x{height}", frames_per_sequence=n_frames)
    return res


def format_table(results: list[dict]) -> str:
    lines = ["| held-out set | frames | count MAE (people) | mean count | incident precision | incident recall "
             "| recall dispersal / fall | false alarms (calm+crowd frames) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        rk = r["incident_recall_by_kind"]
        lines.append(f"| {r['sequences']} seq @ {r['resolution']} | {r['frames']} | {r['count_mae']:.2f} | "
                     f"{r['count_mean']:.1f} | {r['incident_precision']:.3f} | {r['incident_recall']:.3f} | "
                     f"{rk.get('dispersal', float('nan')):.3f} / {rk.get('fall', float('nan')):.3f} | "
                     f"{r['false_alarm_rate_no_incident_kinds']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="held-out synthetic metrics of a crowd-and-incident ONNX model")
    ap.add_argument("--model", default="models/crowd_incident.onnx")
    ap.add_argument("--sequences", type=int, default=120)
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--size", action="append", default=[], help="WxH of the rendered scenes (repeatable)")
    ap.add_argument("--json", help="write the results (and the quick-check set's) here")
    ap.add_argument("--reference", default=str(REFERENCE_MODEL),
                    help="with --json: the model whose incident recall this one must not fall below (eval_spread)")
    ap.add_argument("--spread-sets", type=int, default=4, help="with --json: held-out sets for the recall spread (0: none)")
    ap.add_argument("--spread-cache", help="an .npz to keep the spread's rendered sets in (eval_spread --cache)")
    args = ap.parse_args(argv)
    sizes = args.size or ["160x120"]
    results = []
    for s in sizes:
        w, h = (int(v) for v in s.lower().split("x"))
        results.append(evaluate(args.model, args.sequences, w, h, args.frames))
    print(format_table(results))
    if args.json:
        from training.eval_real import real_metrics
        quick = evaluate(args.model, QUICK_SEQUENCES, 160, 120, args.frames)
        real = real_metrics(args.model)
        print(json.dumps(real, indent=1))
        doc = {"model": Path(args.model).name, "real_validation": real, "results": results, "quick_check": quick}
        if args.spread_sets:
            from training.eval_spread import format_spread, spread_of
            doc["recall_spread"] = spread = spread_of([args.model, args.reference], args.spread_sets, args.sequences,
                                                            args.spread_cache)
            print(format_spread(spread))
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
