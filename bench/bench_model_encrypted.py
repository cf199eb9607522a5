"""Encrypted cost of candidate crowd models side by side, on one pinned core:

    .venv/bin/python bench/bench_model_encrypted.py --model models/crowd_incident.onnx --model other.onnx

Each model is protected (with MODEL.calibration.npy beside it when there is one), then the models
take turns on the same real validation frames (Mall 641-800, every 16th, alternately without and
with the 0.5 s motion): `EdgeModel.infer` (encrypt + evaluate + serialize: the gateway's work per
frame) timed in wall and CPU time, then decrypted and compared with onnxruntime. Taking turns
means a load change on a shared machine hits every model alike; the ratio of the medians to the
first model is the figure to quote. Prints a markdown table; --json writes the figures.
Not part of the test run (speed targets are checked here, not in unit tests).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from protected_nn.api import EdgeModel, OwnerModel, calibration_beside, protect  # noqa: E402
from training import mall  # noqa: E402
from training.eval import model_input_size, predict_onnx  # noqa: E402


def frames(size, stride: int) -> np.ndarray:
    s = mall.load(size, "validation")
    idx = np.arange(0, len(s), stride)
    return np.where((np.arange(len(idx)) % 2 == 1)[:, None, None, None],
                    mall.inputs(s, True)[idx], mall.inputs(s, False)[idx]).astype(np.float32)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="encrypted per-frame cost of crowd models, side by side")
    ap.add_argument("--model", action="append", required=True, help="ONNX model (repeatable; ratios are to the first)")
    ap.add_argument("--stride", type=int, default=16, help="every n-th validation frame")
    ap.add_argument("--rounds", type=int, default=1, help="passes over the frames")
    ap.add_argument("--core", type=int, default=0, help="CPU core to pin to (-1: do not pin)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    if args.core >= 0:
        os.sched_setaffinity(0, {args.core})
    runs = {}
    for m in args.model:
        beside = calibration_beside(m)
        t0 = time.perf_counter()
        prot = protect(m, calibration=np.load(beside) if beside else None)
        x = frames(model_input_size(m), args.stride)
        runs[m] = {"edge": EdgeModel(prot.artifacts), "owner": OwnerModel(prot.artifacts, prot.secret_key), "x": x,
                   "plain": predict_onnx(m, x), "wall": [], "cpu": [], "enc": [], "protect_s": time.perf_counter() - t0,
                   "bundle": (prot.report.get("sizes_bytes") or {}).get("bundle_total"),
                   "estimate_ms": prot.report.get("estimated_latency_ms"),
                   "ckks_n": (prot.report.get("ckks") or {}).get("ring_dimension")}
        print(f"protected {m} in {runs[m]['protect_s']:.0f} s", flush=True)
    n = min(len(r["x"]) for r in runs.values())
    for _ in range(args.rounds):
        for i in range(n):
            for r in runs.values():          # take turns: the same load for every model
                t, c = time.perf_counter(), time.process_time()
                payload = r["edge"].infer(r["x"][i][None])
                r["wall"].append((time.perf_counter() - t) * 1000)
                r["cpu"].append((time.process_time() - c) * 1000)
                r["enc"].append(np.asarray(r["owner"].decrypt(payload)).reshape(-1))
                r["payload"] = len(payload)
    out, first = {}, None
    print("| model | frames | wall p50 ms | CPU p50 ms | CPU max ms | CPU ratio | bundle MB | result KB "
          "| max rel. diff count / logit |")
    print("|---|---|---|---|---|---|---|---|---|")
    for m, r in runs.items():
        enc, plain = np.stack(r["enc"]), np.concatenate([r["plain"][:n]] * args.rounds)
        rel = np.abs(enc - plain).max(0) / np.maximum(r["plain"].max(0) - r["plain"].min(0), 1e-9)
        cpu50 = float(np.median(r["cpu"]))
        first = first or cpu50
        out[m] = {"frames": len(r["cpu"]), "wall_p50_ms": float(np.median(r["wall"])), "cpu_p50_ms": cpu50,
                  "cpu_max_ms": float(np.max(r["cpu"])), "cpu_ratio": cpu50 / first, "bundle_bytes": r["bundle"],
                  "payload_bytes": r["payload"], "max_rel_diff": rel.tolist(), "protect_s": r["protect_s"],
                  "estimate_ms": r["estimate_ms"], "ckks_n": r["ckks_n"]}
        o = out[m]
        print(f"| {m} | {o['frames']} | {o['wall_p50_ms']:.0f} | {cpu50:.0f} | {o['cpu_max_ms']:.0f} | "
              f"{o['cpu_ratio']:.2f} | {(r['bundle'] or 0) / 1e6:.1f} | {r['payload'] / 1024:.1f} | "
              f"{rel[0]:.1e} / {rel[-1]:.1e} |")
    print(f"pinned to core {args.core}; load average at the end {os.getloadavg()[0]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
