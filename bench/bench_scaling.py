"""Control for the gateway's 2-worker speed-up: how much faster do TWO processes doing nothing but
SEAL work (a rotation and an encryption per step, N=8192) go than one, on this machine? No
pipeline, no IPC, no MQTT: this is the ceiling any worker pool can reach here.

Two workloads: "small" touches one ciphertext and one rotation key (fits in cache); "bundle-sized"
cycles through 12 rotation keys and ~40 encrypted weights (~50 MB, about what one inference of the
shipped model streams through memory), doing what the evaluator does: ciphertext products,
additions, relinearization and rotations. If "bundle-sized" scales worse than "small", the gap is
the machine's memory bandwidth, not the worker pool.

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


WEIGHTS = 40                                       # ~40 x 0.9 MB ciphertexts + 12 x 3.3 MB keys


def _worker(workload: str, seconds: float, out) -> None:
    import numpy as np

    from protected_nn.ckks.context import SecretCkks
    from protected_nn.ckks.params import CkksParams

    params = CkksParams(8192, (31, 31, 29, 29, 29, 29, 39), 29)
    steps = [1] if workload == "small" else [2 ** j for j in range(12)]
    sk = SecretCkks.generate(params, set(steps))
    x = np.random.default_rng(0).random(params.slots)
    ct = sk.encrypt(x, 2.0 ** 29)
    weights = [sk.encrypt(x, 2.0 ** 29) for _ in range(WEIGHTS if workload != "small" else 0)]
    sk.rotate(ct, 1)                               # warm up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        if workload == "small":
            sk.rotate(ct, 1)
            sk.encrypt(x, 2.0 ** 29)
        else:                                      # one "giant step": products over all weights
            acc = sk.multiply_no_relin(ct, weights[0])
            for w in weights[1:]:
                sk.add_inplace(acc, sk.multiply_no_relin(ct, w))
            sk.relinearize(acc)
            for k in steps:
                sk.rotate(acc, k)
        n += 1
    out.put(n / (time.perf_counter() - t0))


def rate(workload: str, processes: int, seconds: float) -> float:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(workload, seconds, q)) for _ in range(processes)]
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
    print(f"Machine: {platform.machine()}, {mp.cpu_count()} cores, Python {platform.python_version()}")
    print("| workload | 1 process steps/s | 2 processes steps/s | speed-up |\n|---|---:|---:|---:|")
    for workload in ("small", "bundle-sized"):
        one = rate(workload, 1, args.seconds)
        two = rate(workload, 2, args.seconds)
        print(f"| {workload} | {one:.2f} | {two:.2f} | {two / one:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
