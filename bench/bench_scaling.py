"""Control for the gateway's 2-worker speed-up: how much faster do TWO processes doing nothing but
SEAL work (a rotation and an encryption per step, N=8192) go than one, on this machine? No
pipeline, no IPC, no MQTT: this is the ceiling any worker pool can reach here.

    .venv/bin/python bench/bench_scaling.py [--seconds 8]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _worker(seconds: float, out) -> None:
    import numpy as np

    from protected_nn.ckks.context import SecretCkks
    from protected_nn.ckks.params import CkksParams

    params = CkksParams(8192, (31, 31, 29, 29, 29, 29, 39), 29)
    sk = SecretCkks.generate(params, {1})
    x = np.random.default_rng(0).random(params.slots)
    ct = sk.encrypt(x, 2.0 ** 29)
    sk.rotate(ct, 1)                               # warm up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sk.rotate(ct, 1)
        sk.encrypt(x, 2.0 ** 29)
        n += 1
    out.put(n / (time.perf_counter() - t0))


def rate(processes: int, seconds: float) -> float:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(seconds, q)) for _ in range(processes)]
    for p in procs:
        p.start()
    total = sum(q.get() for _ in procs)
    for p in procs:
        p.join()
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    args = ap.parse_args()
    one = rate(1, args.seconds)
    two = rate(2, args.seconds)
    print(f"Machine: {platform.machine()}, {mp.cpu_count()} cores, Python {platform.python_version()}")
    print("| processes | SEAL steps/s (rotate + encrypt) | speed-up |\n|---|---:|---:|")
    print(f"| 1 | {one:.1f} | 1.00x |\n| 2 | {two:.1f} | {two / one:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
