"""The Pyfhel patch's fused products and hoisted rotations against SEAL's operations one by one,
on the same bundle in the same process (scripts/pyfhel/0002): per zoo model, CPU time of one
inference with `Ckks.fused` on and off, alternated per repetition, on one pinned core.

    .venv/bin/python bench/bench_fused.py [--models lenet5,crowd_cnn] [-R 5] [--core 1]

Both ways give the same ciphertext sums (the dot products are exact rewrites; a hoisted rotation
differs only in its rounding noise), so the outputs are checked against each other and against
onnxruntime.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402

CHILD = r"""
import os, sys, json, time, pathlib
os.sched_setaffinity(0, {{{core}}})
import numpy as np
from protected_nn.artifacts import ModelArtifacts
from protected_nn.api import EdgeModel
d = pathlib.Path(sys.argv[1])
edge = EdgeModel(ModelArtifacts.from_members({{p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}}))
ck = edge._eval.ckks
if not ck.fused:
    sys.exit("this Pyfhel lacks the fused operations (scripts/pyfhel/0002 not applied)")
xs = np.load(d / "inputs" / "x.npy")
cpu = {{"fused": [], "seal": []}}
for i, x in enumerate(xs):
    for mode in (("fused", "seal") if i % 2 == 0 else ("seal", "fused")):
        ck.fused = mode == "fused"
        c = time.process_time()
        payload = edge.infer(x)
        cpu[mode].append(time.process_time() - c)
        (d / "inputs" / f"y{{i}}-{{mode}}.bin").write_bytes(payload)
print(json.dumps(cpu))
"""


def bench_model(name: str, reps: int, core: int) -> dict:
    import onnxruntime as ort
    from protected_nn import zoo
    from protected_nn.api import OwnerModel, ProtectOptions, protect

    model = zoo.ENGINE_MODELS[name](0)
    prot = protect(model, options=ProtectOptions(check_samples=1, progress=False))
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    xs = np.random.default_rng(1).uniform(0, 1, [reps] + shape).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for member, blob in prot.artifacts.as_members().items():
            (d / member).write_bytes(blob)
        (d / "inputs").mkdir()
        np.save(d / "inputs" / "x.npy", xs)
        out = subprocess.run([sys.executable, "-c", CHILD.format(core=core), str(d)],
                             capture_output=True, text=True,
                             env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                                 [str(HERE.parent)] + sys.path[1:])))
        if out.returncode:
            raise RuntimeError(out.stderr[-2000:])
        cpu = json.loads(out.stdout.strip().splitlines()[-1])
        owner = OwnerModel(prot.artifacts, prot.secret_key)
        err, gap = 0.0, 0.0
        for i, x in enumerate(xs):
            ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
            ys = {m: owner.decrypt((d / "inputs" / f"y{i}-{m}.bin").read_bytes()) for m in cpu}
            span = max(float(np.ptp(ref)), 1e-6)
            err = max(err, *(float(np.max(np.abs(y - ref))) / span for y in ys.values()))
            gap = max(gap, float(np.max(np.abs(ys["fused"] - ys["seal"]))) / span)
    med = {m: float(np.median(v)) for m, v in cpu.items()}
    return {"model": name, "cpu_s": cpu, "median_s": med, "ratio": med["fused"] / med["seal"],
            "max_rel_error": err, "fused_vs_seal": gap}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="lenet5,crowd_cnn")
    p.add_argument("-R", "--reps", type=int, default=5)
    p.add_argument("--core", type=int, default=0)
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    results = []
    for name in a.models.split(","):
        r = bench_model(name, a.reps, a.core)
        results.append(r)
        print(f"{name}: CPU median fused {r['median_s']['fused']:.2f} s, SEAL one by one "
              f"{r['median_s']['seal']:.2f} s (ratio {r['ratio']:.2f}, {a.reps} alternated pairs); "
              f"max error {r['max_rel_error']:.1e} of the output range, fused vs SEAL "
              f"{r['fused_vs_seal']:.1e}", flush=True)
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
