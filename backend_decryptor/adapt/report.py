"""The figures adapt reports, all on the held-back inputs (never trained on), and their text."""
from __future__ import annotations

import numpy as np


def top1(outputs: np.ndarray) -> np.ndarray | None:
    flat = outputs.reshape(len(outputs), -1)
    return flat.argmax(axis=1) if flat.shape[1] > 1 else None


def held_back_metrics(original: np.ndarray, adapted: np.ndarray, labels: np.ndarray | None) -> dict:
    """original/adapted: onnxruntime outputs of both files on the held-back inputs."""
    span = float(original.max() - original.min()) or 1.0
    m = {"inputs": int(len(original)),
         "max_abs_diff_over_range": float(np.abs(adapted - original).max() / span),
         "mean_abs_diff": float(np.abs(adapted - original).mean())}
    a, b = top1(original), top1(adapted)
    if a is not None:
        m["top1_agreement"] = float(np.mean(a == b))
    if labels is not None and np.issubdtype(labels.dtype, np.integer) and a is not None:
        m["accuracy_original"] = float(np.mean(a == labels))
        m["accuracy_adapted"] = float(np.mean(b == labels))
    elif labels is not None:
        y = labels.reshape(len(labels), -1)
        m["mae_original"] = _known_mae(original.reshape(y.shape), y)
        m["mae_adapted"] = _known_mae(adapted.reshape(y.shape), y)
    return m


def _known_mae(out: np.ndarray, y: np.ndarray) -> list:
    """Per output element, the mean absolute error over its known (non-NaN) targets; None where
    no target is known."""
    known = ~np.isnan(y)
    err = np.where(known, np.abs(out - np.nan_to_num(y)), 0.0).sum(axis=0)
    n = known.sum(axis=0)
    return [float(e / k) if k else None for e, k in zip(err, n)]


def _pct(v) -> str:
    return f"{100 * v:.1f}%"


def render(r: dict) -> str:
    m = r["held_back"]
    acts = ", ".join(f"{a['node']} ({a['op']}, {a['channels']} ch, {a['form']})" for a in r["activations"])
    lines = [f"Adapted model: {r['out']} (from {r['source']['file']})",
             f"  activations -> degree-{r['degree']} polynomials: {acts or 'none'}",
             f"  MaxPool -> AveragePool: {', '.join(r['maxpool_replaced']) or 'none'}",
             f"  trained on {r['samples']['train']} inputs, {r['epochs']} epochs, seed {r['seed']}, "
             f"{r['train_seconds']:.1f} s; held back {r['samples']['held_back']} inputs (not trained on)",
             f"  kept epoch {r['kept_epoch']} of {r['epochs']} (lowest held-back loss)",
             f"  held-back loss (distillation, + labels when given): polynomial fits alone {r['loss_before']:.4g} -> "
             f"adapted {r['loss_after']:.4g}",
             "Held-back figures (onnxruntime on both ONNX files):"]
    if "top1_agreement" in m:
        lines.append(f"  top-1 agreement with the original: {_pct(m['top1_agreement'])}")
    if "accuracy_original" in m:
        lines.append(f"  accuracy: original {_pct(m['accuracy_original'])}, "
                     f"adapted {_pct(m['accuracy_adapted'])}")
    if "mae_original" in m:
        r4 = lambda v: [None if e is None else round(e, 4) for e in v]  # noqa: E731
        lines.append(f"  mean abs error vs labels: original {r4(m['mae_original'])}, "
                     f"adapted {r4(m['mae_adapted'])}")
    lines.append(f"  max |adapted - original| = {m['max_abs_diff_over_range']:.3g} of the output range")
    o = r["outside_range"]
    lines.append(f"  activation inputs outside their polynomial's range: {100 * o['share']:.3f}% "
                 f"(largest {o['max_normalised']:.2f}x the half width from the centre)")
    lines.append("Encrypted plan (protect's planner, no keys, nothing encrypted):")
    for key, label in (("plan_adapted", "adapted"), ("plan_original", "original, protect's fits")):
        p = r.get(key) or {}
        if "error" in p:
            lines.append(f"  {label}: cannot plan: {p['error']}")
        elif p:
            lines.append(f"  {label}: multiplicative depth {p['depth']}, N={p['ring_dimension']}, "
                         f"estimated {p['estimated_latency_ms']:.0f} ms per inference")
    return "\n".join(lines)
