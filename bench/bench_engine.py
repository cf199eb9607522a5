"""Issue 9's engine benchmark: per zoo model, products next to the floor, rotations, latency
(median, one core pinned), bundle size, gateway worker RSS and error against onnxruntime.

    .venv/bin/python bench/bench_engine.py [--models lenet5,crowd_cnn] [-R 3] [--core 0] [--json f] [--profile]

protect() runs in this process (owner side, not timed beyond its total). The gateway side runs in
a child process pinned to one core with one thread (as a worker does): it loads the model as a
gateway worker does, member by member from a sealed copy of the bundle the parent hands it
(edge_agent/sealed_artifacts.py), runs the repetitions and reports its peak RSS (VmHWM: keys and
weight ciphertexts as SEAL holds them, the transient peak of loading them, evaluation), its RSS
once loaded and the peak while loading, so the RSS is what a worker needs.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

TARGETS = {"lenet5": (2.0, 300e6, 600e6), "crowd_cnn": (1.2, 250e6, None),
           "wide_first_conv": (4.0, 400e6, None), "mobilenet_block": (0.6, None, None)}

CHILD = r"""
import os, sys, json, time, pathlib
os.sched_setaffinity(0, {{{core}}})
import numpy as np
from edge_agent.sealed_artifacts import SealedArtifacts
from protected_nn.api import EdgeModel
# VmHWM, not ru_maxrss: the latter survives fork+exec and would report the parent's peak
status = lambda key: next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))
d = pathlib.Path(sys.argv[1])
index = {{name: tuple(entry) for name, entry in json.loads((d / "index.json").read_text()).items()}}
t = time.perf_counter()
edge = EdgeModel(SealedArtifacts(int(sys.argv[2]), index))    # as a worker: edge_agent/pool.py
load = time.perf_counter() - t
loaded, load_peak = status("VmRSS"), status("VmHWM")
xs = np.load(d / "x.npy")
lat, cpu = [], []
for i, x in enumerate(xs):
    t, c = time.perf_counter(), time.process_time()
    payload = edge.infer(x)
    lat.append(time.perf_counter() - t); cpu.append(time.process_time() - c)
    (d / f"y{{i}}.bin").write_bytes(payload)
rss = status("VmHWM")
profile = None
if {profile}:         # one more inference, counted per operation (op_profile.py), after the timed ones
    sys.path.insert(0, {bench!r})
    from op_profile import OpProfile
    from protected_nn.ckks.context import Ckks
    profile = OpProfile(Ckks).run(edge.infer, xs[0])
print(json.dumps({{"load_s": load, "lat": lat, "cpu": cpu, "rss": rss, "rss_loaded": loaded,
                  "rss_load_peak": load_peak, "profile": profile}}))
"""


def bench_model(name: str, reps: int, core: int, profile: bool = False) -> dict:
    import onnxruntime as ort
    from protected_nn import zoo
    from edge_agent.sealed_artifacts import SealedArtifacts
    from protected_nn.api import OwnerModel, ProtectOptions, protect

    model = zoo.ENGINE_MODELS[name](0)
    t = time.perf_counter()
    prot = protect(model, options=ProtectOptions(check_samples=1))
    protect_s = time.perf_counter() - t
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    xs = np.random.default_rng(1).uniform(0, 1, [reps] + shape).astype(np.float32)
    # The daemon's sealed copy of the verified bundle, handed to the child as to a worker
    # (edge_agent/sealed_artifacts.py): the child's RSS is then what one worker needs.
    sealed = SealedArtifacts.write(prot.artifacts.as_members())
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "index.json").write_text(json.dumps(sealed.index))
        np.save(d / "x.npy", xs)
        out = subprocess.run([sys.executable, "-c", CHILD.format(core=core, profile=profile, bench=str(HERE)), str(d), str(sealed.fd)],
                             capture_output=True, text=True, pass_fds=(sealed.fd,),
                             env=dict(os.environ, PYTHONPATH=str(HERE.parent)))
        sealed.close()
        if out.returncode:
            raise RuntimeError(out.stderr[-2000:])
        child = json.loads(out.stdout.strip().splitlines()[-1])
        owner = OwnerModel(prot.artifacts, prot.secret_key)
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        errs = []
        for i, x in enumerate(xs):
            ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
            y = owner.decrypt((d / f"y{i}.bin").read_bytes())
            errs.append(float(np.max(np.abs(y - ref)) / max(float(np.ptp(ref)), 1e-6)))
    rep = prot.report
    layers = [{k: s.get(k) for k in ("layer", "op", "products", "floor_products", "rotations",
                                      "in_cts", "out_cts")} for s in rep["layers"]]
    return {"model": name, "protect_s": protect_s, "ckks": rep["ckks"],
            "products": sum(s["products"] for s in rep["layers"]),
            "rotations": sum(s["rotations"] for s in rep["layers"]),
            "rotation_keys": len(rep["rotation_steps"]), "layers": layers,
            "latency_s": float(np.median(child["lat"])), "cpu_s": float(np.median(child["cpu"])),
            "load_s": child["load_s"], "rss_bytes": child["rss"], "rss_loaded_bytes": child["rss_loaded"],
            "rss_load_peak_bytes": child["rss_load_peak"],
            "bundle_bytes": rep["sizes_bytes"]["bundle_total"], "sizes": rep["sizes_bytes"],
            "max_rel_error": max(errs), "report": prot.report_text, "profile": child["profile"]}


def render(r: dict) -> str:
    lat_t, size_t, rss_t = TARGETS.get(r["model"], (None, None, None))
    ok = lambda v, t: "" if t is None else (" (met)" if v <= t else f" (target {t:g}: not met)")  # noqa: E731
    lines = [f"### {r['model']}",
             f"N={r['ckks']['ring_dimension']}, primes {r['ckks']['qi_bits']}; products {r['products']}, "
             f"rotations {r['rotations']}, Galois keys {r['rotation_keys']}",
             f"latency median {r['latency_s']:.2f} s wall / {r['cpu_s']:.2f} s CPU{ok(r['cpu_s'], lat_t)}; "
             f"bundle {r['bundle_bytes'] / 1e6:.0f} MB{ok(r['bundle_bytes'], size_t)}; worker RSS "
             f"{r['rss_bytes'] / 1e6:.0f} MB{ok(r['rss_bytes'], rss_t)} (loading: peak "
             f"{r['rss_load_peak_bytes'] / 1e6:.0f} MB, then {r['rss_loaded_bytes'] / 1e6:.0f} MB; load "
             f"{r['load_s']:.1f} s); max error {r['max_rel_error']:.1e} "
             f"of the output range; protect {r['protect_s']:.0f} s", "",
             "| layer | op | products | floor | rotations | in cts | out cts |", "|---|---|---:|---:|---:|---|---:|"]
    for s in r["layers"]:
        lines.append(f"| {s['layer']} | {s['op']} | {s['products']} | {s['floor_products'] or ''} | "
                     f"{s['rotations']} | {s['in_cts'] or ''} | {s['out_cts'] or ''} |")
    if r.get("profile"):
        from op_profile import render as render_profile
        lines += ["", "Per operation, one inference (--profile; exclusive times):", ""]
        lines += render_profile(r["profile"])
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="lenet5,crowd_cnn")
    p.add_argument("-R", "--reps", type=int, default=3)
    p.add_argument("--core", type=int, default=0)
    p.add_argument("--json", type=Path)
    p.add_argument("--profile", action="store_true",
                   help="also count and time each CKKS operation of one more inference (op_profile.py)")
    args = p.parse_args(argv)
    os.sched_setaffinity(0, {args.core})
    results = []
    for name in args.models.split(","):
        try:
            r = bench_model(name, args.reps, args.core, args.profile)
        except Exception as exc:  # report and go on: one model's failure is a result too
            r = {"model": name, "error": f"{type(exc).__name__}: {exc}"}
            print(f"### {name}\nFAILED: {r['error']}\n", flush=True)
        else:
            print(render(r) + "\n", flush=True)
        results.append(r)
    if args.json:
        args.json.write_text(json.dumps([{k: v for k, v in r.items() if k != "report"} for r in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
