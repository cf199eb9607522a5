"""Encrypted vs plaintext metrics of a model on held-out frames (protected_nn facade).

    python -m training.eval_encrypted --model models/crowd_incident.onnx --stride 2 --json out.json

Protects the model (keys, compile, encrypt every weight) with the calibration set shipped beside
it (MODEL.calibration.npy, else held-out-like rendered frames), then for each held-out input:
EdgeModel.infer (encrypt + evaluate + serialize, timed: the gateway's per-frame latency on one
core) and OwnerModel.decrypt; the same frames go through onnxruntime. Real frames: the Mall
validation frames 641-800 (every `stride`-th, half with the 0.5 s motion channel); `--synthetic`
adds the held-out rendered sequences. Reports both metric sets, the largest |encrypted -
plaintext| (absolute and relative to the output range), the latency and the bundle size.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from training import mall
from training.dataset import LabelledSet
from training.eval import HELDOUT_SEED_BASE, heldout_set, metrics, model_input_size, predict_onnx

CALIBRATION_FIRST = 5_000       # held-out seeds used only to calibrate, not to measure


def subsample(data: LabelledSet, stride: int) -> LabelledSet:
    idx = np.arange(0, len(data), stride)
    return LabelledSet(data.x[idx], data.count[idx], data.incident[idx], data.kind[idx])


def _protect(model_path):
    from protected_nn.api import calibration_beside, protect
    size = model_input_size(model_path)
    beside = calibration_beside(model_path)
    cal = np.load(beside) if beside else subsample(heldout_set(4, 100, 160, 120, first=CALIBRATION_FIRST,
                                                               input_size=size), 4).x
    t0 = time.perf_counter()
    prot = protect(model_path, calibration=cal)
    return prot, time.perf_counter() - t0


def _run(prot, x: np.ndarray):
    from protected_nn.api import EdgeModel, OwnerModel
    edge, owner = EdgeModel(prot.artifacts), OwnerModel(prot.artifacts, prot.secret_key)
    enc, lat, cpu, payload = [], [], [], b""
    for xi in x:
        t, c = time.perf_counter(), time.process_time()
        payload = edge.infer(xi[None])
        lat.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        enc.append(np.asarray(owner.decrypt(payload)).reshape(-1))
    lat_ms, cpu_ms = np.asarray(lat) * 1000, np.asarray(cpu) * 1000
    # wall time is what a gateway core waits; CPU time is the same work without the waits a
    # machine shared with other jobs adds (this process is single-threaded: CPU time <= one core)
    return np.stack(enc), {"mean": float(lat_ms.mean()), "p50": float(np.percentile(lat_ms, 50)),
                           "p95": float(np.percentile(lat_ms, 95)), "max": float(lat_ms.max()),
                           "cpu_p50": float(np.percentile(cpu_ms, 50)), "cpu_max": float(cpu_ms.max())}, len(payload)


def _real_frames(size, stride: int) -> LabelledSet:
    s = mall.load(size, "validation")
    idx = np.arange(0, len(s), stride)
    x = np.where((np.arange(len(idx)) % 2 == 1)[:, None, None, None],
                 mall.inputs(s, True)[idx], mall.inputs(s, False)[idx])     # half with 0.5 s motion
    return LabelledSet(x, s.count[idx], np.zeros(len(idx), np.float32), np.full(len(idx), "real"))


def evaluate_encrypted_real(model_path: str | Path, stride: int = 2, prot=None) -> dict:
    if prot is None:
        prot, protect_s = _protect(model_path)
    else:
        protect_s = None
    data = _real_frames(model_input_size(model_path), stride)
    enc, lat, payload_bytes = _run(prot, data.x)
    plain = predict_onnx(model_path, data.x)
    out_range = np.maximum(plain.max(axis=0) - plain.min(axis=0), 1e-9)
    return {
        "frames": len(data), "real_frames": f"Mall {641}-{800}, every {stride}th, alternately without / with 0.5 s motion",
        "encrypted": metrics(enc, data), "plaintext": metrics(plain, data),
        "encrypted_outputs": enc.tolist(), "plaintext_outputs": plain.tolist(),
        "output_range": out_range.tolist(),
        "max_abs_diff": [float(v) for v in np.abs(enc - plain).max(axis=0)],
        "max_rel_diff": [float(v) for v in (np.abs(enc - plain).max(axis=0) / out_range)],
        "infer_ms": lat, "protect_s": protect_s, "payload_bytes": payload_bytes,
        "bundle_bytes": (prot.report.get("sizes_bytes") or {}).get("bundle_total"),
    }


def evaluate_encrypted(model_path: str | Path, n_sequences: int = 12, stride: int = 5, prot=None) -> dict:
    """The same on held-out rendered sequences at 160x120."""
    if prot is None:
        prot, _ = _protect(model_path)
    data = subsample(heldout_set(n_sequences, 100, 160, 120, input_size=model_input_size(model_path)), stride)
    enc, lat, payload_bytes = _run(prot, data.x)
    plain = predict_onnx(model_path, data.x)
    return {"sequences": n_sequences, "stride": stride, "frames": len(data),
            "held_out_seeds": [HELDOUT_SEED_BASE, HELDOUT_SEED_BASE + n_sequences - 1],
            "encrypted": metrics(enc, data), "plaintext": metrics(plain, data),
            "max_abs_diff": [float(v) for v in np.abs(enc - plain).max(axis=0)],
            "infer_ms": lat, "payload_bytes": payload_bytes}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="encrypted vs plaintext metrics on held-out frames")
    ap.add_argument("--model", default="models/crowd_incident.onnx")
    ap.add_argument("--stride", type=int, default=2, help="every n-th real validation frame")
    ap.add_argument("--synthetic", type=int, default=0, help="also this many held-out rendered sequences")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    prot, protect_s = _protect(args.model)
    print(prot.report_text)
    res = {"protect_s": protect_s, "report": prot.report,
           "real": evaluate_encrypted_real(args.model, args.stride, prot)}
    if args.synthetic:
        res["synthetic"] = evaluate_encrypted(args.model, args.synthetic, 5, prot)
    slim = {k: v for k, v in res["real"].items() if not k.endswith("_outputs")}
    print(json.dumps({**res, "real": slim}, indent=2, default=str))
    if args.json:
        Path(args.json).write_text(json.dumps({**res, "real": slim}, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
