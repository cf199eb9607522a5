"""Seeded vs full serialization of keys and weight ciphertexts (issue 9 item 4): per-key and
per-ciphertext sizes at N=8192 and N=16384, signed bundle sizes of the zoo networks, and, side by
side on the same plan, bundle load time, inference latency and gateway RSS.

    .venv/bin/python bench/bench_seeded.py [--networks tenseal_cnn,cryptonets] [-R 10] [--core 0]

Both bundles of a network come from the same compiled plan and weights (`protect` with
ProtectOptions(seeded=False) and the default seeded=True), so only the serialization differs.
Latency: EdgeModel.infer (encrypt + evaluate + serialize), the two bundles' models alternating
on the same image, one core, one thread; medians of wall and process CPU time. RSS: a fresh
process per bundle reads it, builds the EdgeModel, runs one inference and reports its peak
RSS (VmHWM).
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from protected_nn import zoo                                     # noqa: E402
from protected_nn.api import EdgeModel, ProtectOptions, protect  # noqa: E402
from protected_nn.bundle import generate_owner_key, read_bundle, write_bundle  # noqa: E402
from protected_nn.ckks import seeded                             # noqa: E402
from protected_nn.ckks.context import SecretCkks                 # noqa: E402
from protected_nn.ckks.params import choose_params               # noqa: E402

NETWORKS = ("tenseal_cnn", "cryptonets")
GALOIS_STEPS = (1, 2, 4, 8, 16, 32)     # sizes are per step: the count only averages noise away
# Peak RSS from VmHWM: ru_maxrss of an exec'd child starts from the parent's RSS at fork time.
RSS_CHILD = """
import re, sys, numpy as np
sys.path.insert(0, sys.argv[2])
from protected_nn.api import EdgeModel
from protected_nn.bundle import read_bundle
_, art = read_bundle(sys.argv[1], None)
edge = EdgeModel(art)
edge.infer(np.full(edge.input_shape, 0.5, np.float32))
status = open("/proc/self/status").read()
print(int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) * 1024)
"""


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} KB"


def unit_sizes() -> list[dict]:
    """Per-item sizes (zstd) at the parameter sets the planner picks for a depth-4 plan at N=8192
    and a depth-9 plan at N=16384 (LeNet-5-like chains)."""
    rows = []
    for depth, slots in ((4, 4096), (9, 8192)):
        params = choose_params(depth, slots, output_bits=8)
        sk = SecretCkks.generate(params, set(GALOIS_STEPS), evaluation_keys=True)
        he, k = sk.he, len(GALOIS_STEPS)
        x = np.random.default_rng(0).uniform(-1, 1, params.slots)
        scale = 2.0 ** params.scale_bits
        items = {
            "Galois key, per step": (len(he.to_bytes_rotate_key("zstd")) / k,
                                     len(seeded.seeded_galois_keys(he, GALOIS_STEPS)) / k),
            "relinearization key": (len(he.to_bytes_relin_key("zstd")), len(seeded.seeded_relin_key(he))),
            "public key": (len(he.to_bytes_public_key("zstd")), len(seeded.seeded_public_key(he))),
            "ciphertext, top level": (len(sk.encrypt_to_bytes(x, scale, 0, seeded_ct=False)),
                                      len(sk.encrypt_to_bytes(x, scale, 0))),
            f"ciphertext, level {depth // 2}": (len(sk.encrypt_to_bytes(x, scale, depth // 2, seeded_ct=False)),
                                                len(sk.encrypt_to_bytes(x, scale, depth // 2))),
        }
        for name, (full, small) in items.items():
            rows.append({"n": params.n, "qi_sizes": list(params.qi_sizes), "item": name,
                         "full": full, "seeded": small})
    return rows


def _load(path: Path) -> tuple[EdgeModel, float]:
    t0 = time.perf_counter()
    _, art = read_bundle(path, None)
    edge = EdgeModel(art)
    return edge, time.perf_counter() - t0


def _rss(path: Path) -> int:
    out = subprocess.run([sys.executable, "-c", RSS_CHILD, str(path), str(ROOT)], check=True,
                         capture_output=True, text=True)
    return int(out.stdout.strip().splitlines()[-1])


def network(net: str, reps: int, workdir: Path) -> dict:
    model = getattr(zoo, net)(0)
    key = generate_owner_key()
    res = {"network": net}
    paths = {}
    for kind, opts in (("full", ProtectOptions(seeded=False)), ("seeded", ProtectOptions())):
        t0 = time.perf_counter()
        prot = protect(model, options=opts)
        protect_s = time.perf_counter() - t0
        paths[kind] = workdir / f"{net}-{kind}.bundle"
        write_bundle(paths[kind], net, prot.artifacts, key, forbidden=prot.secret_key)
        res[kind] = {"bundle": paths[kind].stat().st_size, "protect_s": protect_s,
                     "encrypt_params_s": prot.report.get("timings", {}).get("encrypt_params_s"),
                     "members": {m: len(b) for m, b in prot.artifacts.as_members().items()}}
    edges, loads = {}, {"full": [], "seeded": []}
    for _ in range(3):
        for kind in ("full", "seeded"):
            edges[kind], dt = _load(paths[kind])
            loads[kind].append(dt)
    x = np.random.default_rng(1).uniform(0, 1, size=edges["full"].input_shape).astype(np.float32)
    wall, cpu = {"full": [], "seeded": []}, {"full": [], "seeded": []}
    for kind in ("full", "seeded"):
        edges[kind].infer(x)                       # warm-up
    for r in range(reps):
        for kind in (("full", "seeded") if r % 2 == 0 else ("seeded", "full")):
            t0, c0 = time.perf_counter(), time.process_time()
            edges[kind].infer(x)
            wall[kind].append(time.perf_counter() - t0)
            cpu[kind].append(time.process_time() - c0)
    for kind in ("full", "seeded"):
        res[kind].update(load_s=float(np.median(loads[kind])), infer_wall_s=float(np.median(wall[kind])),
                         infer_cpu_s=float(np.median(cpu[kind])), rss=_rss(paths[kind]))
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--networks", default=",".join(NETWORKS))
    ap.add_argument("-R", "--reps", type=int, default=10)
    ap.add_argument("--core", type=int, default=0)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {a.core})
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared), Python "
          f"{platform.python_version()}, one core, one thread")
    units = unit_sizes()
    print("\n| N | primes (bits) | item | full (zstd) | seeded (zstd) | ratio |\n|---|---|---|---:|---:|---:|")
    for u in units:
        print(f"| {u['n']} | {u['qi_sizes']} | {u['item']} | {_mb(u['full'])} | {_mb(u['seeded'])} | "
              f"{u['seeded'] / u['full']:.3f} |")
    nets = []
    with tempfile.TemporaryDirectory() as tmp:
        for net in [s.strip() for s in a.networks.split(",") if s.strip()]:
            nets.append(network(net, a.reps, Path(tmp)))
    print("\n| network | member | full | seeded | ratio |\n|---|---|---:|---:|---:|")
    for r in nets:
        for m, full in r["full"]["members"].items():
            if full >= 1000:
                small = r["seeded"]["members"][m]
                print(f"| {r['network']} | {m} | {_mb(full)} | {_mb(small)} | {small / full:.3f} |")
        print(f"| {r['network']} | **signed bundle** | {_mb(r['full']['bundle'])} | "
              f"{_mb(r['seeded']['bundle'])} | {r['seeded']['bundle'] / r['full']['bundle']:.3f} |")
    print("\n| network | bundle | protect s | load s | infer wall s (median) | infer CPU s (median) | "
          "gateway peak RSS |\n|---|---|---:|---:|---:|---:|---:|")
    for r in nets:
        for kind in ("full", "seeded"):
            d = r[kind]
            print(f"| {r['network']} | {kind} | {d['protect_s']:.1f} | {d['load_s']:.3f} | {d['infer_wall_s']:.3f} | "
                  f"{d['infer_cpu_s']:.3f} | {d['rss'] / 1e6:.0f} MB |")
        print(f"| {r['network']} | seeded / full | {r['seeded']['protect_s'] / r['full']['protect_s']:.2f}x | "
              f"{r['seeded']['load_s'] / r['full']['load_s']:.2f}x | "
              f"{r['seeded']['infer_wall_s'] / r['full']['infer_wall_s']:.2f}x | "
              f"{r['seeded']['infer_cpu_s'] / r['full']['infer_cpu_s']:.2f}x | "
              f"{r['seeded']['rss'] / r['full']['rss']:.2f}x |")
    if a.json:
        a.json.write_text(json.dumps({"units": units, "networks": nets}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
