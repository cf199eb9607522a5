"""Encrypted vs plaintext metrics of a model on held-out synthetic frames (protected_nn facade).

    python -m training.eval_encrypted --model models/crowd_incident.onnx --sequences 12 --stride 5

Protects the model (keys, compile, encrypt every weight) with held-out-like calibration frames,
then for each held-out input: EdgeModel.infer (encrypt + evaluate + serialize, timed: the
gateway's per-frame latency on one core) and OwnerModel.decrypt; the same frames go through
onnxruntime. Reports both metric sets, the largest |encrypted - plaintext| and the latency.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from training.dataset import LabelledSet
from training.eval import HELDOUT_SEED_BASE, heldout_set, metrics, predict_onnx

CALIBRATION_FIRST = 5_000       # held-out seeds used only to calibrate, not to measure


def subsample(data: LabelledSet, stride: int) -> LabelledSet:
    idx = np.arange(0, len(data), stride)
    return LabelledSet(data.x[idx], data.count[idx], data.incident[idx], data.kind[idx])


def evaluate_encrypted(model_path: str | Path, n_sequences: int = 12, stride: int = 5,
                       n_frames: int = 100, width: int = 160, height: int = 120) -> dict:
    from protected_nn.api import EdgeModel, OwnerModel, protect

    data = subsample(heldout_set(n_sequences, n_frames, width, height), stride)
    cal = subsample(heldout_set(4, n_frames, width, height, first=CALIBRATION_FIRST), 4).x
    t0 = time.perf_counter()
    prot = protect(model_path, calibration=cal)
    protect_s = time.perf_counter() - t0
    edge, owner = EdgeModel(prot.artifacts), OwnerModel(prot.artifacts, prot.secret_key)
    enc, lat = [], []
    for x in data.x:
        t = time.perf_counter()
        payload = edge.infer(x[None])
        lat.append(time.perf_counter() - t)
        enc.append(np.asarray(owner.decrypt(payload)).reshape(-1))
    enc = np.stack(enc)
    plain = predict_onnx(model_path, data.x)
    lat_ms = np.asarray(lat) * 1000
    return {
        "sequences": n_sequences, "stride": stride, "frames": len(data),
        "held_out_seeds": [HELDOUT_SEED_BASE, HELDOUT_SEED_BASE + n_sequences - 1],
        "resolution": f"{width}x{height}",
        "encrypted": metrics(enc, data), "plaintext": metrics(plain, data),
        "max_abs_diff": [float(v) for v in np.abs(enc - plain).max(axis=0)],
        "infer_ms": {"mean": float(lat_ms.mean()), "p50": float(np.percentile(lat_ms, 50)),
                     "p95": float(np.percentile(lat_ms, 95)), "max": float(lat_ms.max())},
        "protect_s": protect_s, "payload_bytes": len(payload),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="encrypted vs plaintext held-out metrics")
    ap.add_argument("--model", default="models/crowd_incident.onnx")
    ap.add_argument("--sequences", type=int, default=12)
    ap.add_argument("--stride", type=int, default=5, help="use every n-th frame (encrypted runs are slow)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    res = evaluate_encrypted(args.model, args.sequences, args.stride)
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
