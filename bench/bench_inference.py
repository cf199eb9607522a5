"""Latency, error and sizes of one encrypted inference: ours (protected_nn) vs TenSEAL 0.3.18
(plaintext weights, its tutorial's code) vs onnxruntime (plaintext), on the issue's networks.

    .venv/bin/python bench/bench_inference.py [--networks tenseal_cnn,cryptonets]
        [--only ours,tenseal,onnxruntime] [-R 10] [--warmup 1] [--core 0] [--json out.json]

One process, pinned to one core, every library at one thread. Per repetition the contenders run
back to back on the same image (their order rotates each repetition), so machine noise hits them
alike. Latency = encrypt + evaluate + serialize the result (ours: EdgeModel.infer; TenSEAL:
im2col_encoding + tutorial forward + serialize; onnxruntime: session.run). Setup (keys, compile,
weight encryption) is reported apart and not counted. Error = max |decrypted - onnxruntime| /
(max - min of onnxruntime's output), worst over the repetitions.

Both wall-clock and process CPU time are recorded per inference: on a shared, loaded machine the
wall figure includes time the process waited for the core, the CPU figure does not (every
contender runs in this process on one thread, so CPU time is its whole cost).
"""
from __future__ import annotations

import os

# Before numpy/onnxruntime/SEAL load: one thread everywhere (the target is one core).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import glob
import json
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))   # protected_nn from the checkout
sys.path.insert(0, str(HERE))          # tenseal_ref

CONTENDERS = ("ours", "tenseal", "onnxruntime")
NETWORKS = ("tenseal_cnn", "cryptonets")
# Targets from issue 2.
TARGET_REL_ERROR = 1e-2
TARGET_RATIO_TENSEAL_CNN = 0.2
TARGET_CRYPTONETS_S = 1.0
TARGET_RESULT_BYTES = 64 * 1024
TARGET_CRYPTONETS_BUNDLE = 64 * 1024 * 1024


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--networks", default=",".join(NETWORKS), help=f"comma list of {NETWORKS}")
    p.add_argument("--only", default=",".join(CONTENDERS), help=f"comma list of {CONTENDERS}")
    p.add_argument("-R", "--reps", type=int, default=10, help="timed repetitions per contender")
    p.add_argument("--warmup", type=int, default=1, help="untimed repetitions first")
    p.add_argument("--core", type=int, default=0, help="CPU core to pin the process to")
    p.add_argument("--seed", type=int, default=0, help="weights seed (zoo builders) and images seed")
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    p.add_argument("--workdir", type=Path, help="where to write the .onnx and bundle (default: temp)")
    a = p.parse_args(argv)
    a.networks = _choices(a.networks, NETWORKS, "--networks")
    a.only = _choices(a.only, CONTENDERS, "--only")
    if a.reps < 1 or a.warmup < 0:
        p.error("--reps must be >= 1 and --warmup >= 0")
    return a


def _choices(text: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in items if s not in allowed]
    if bad or not items:
        raise SystemExit(f"{flag}: unknown {bad or 'empty list'}; choose from {', '.join(allowed)}")
    return items


def machine_info() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "pinned_to": sorted(os.sched_getaffinity(0)),
            "python": platform.python_version(), "platform": platform.platform()}
    for mod in ("Pyfhel", "tenseal", "onnxruntime", "onnx", "numpy"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # not installed: say so rather than fail the whole benchmark
            info[mod] = None
    try:
        import Pyfhel
        libs = glob.glob(str(Path(Pyfhel.__file__).parent / "libseal-*.a"))
        info["seal_pyfhel"] = Path(libs[0]).stem.removeprefix("libseal-") if libs else None
    except Exception:
        info["seal_pyfhel"] = None
    info["seal_tenseal"] = "bundled in the wheel (version not exposed)" if info["tenseal"] else None
    return info


# --- contenders: setup() untimed; run(x) timed; output(result) -> np.ndarray shaped like ORT's ---

class OnnxRuntime:
    name = "onnxruntime"

    def __init__(self, onnx_path: Path):
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        self.input_name = self.sess.get_inputs()[0].name
        self.extra = {}

    def run(self, x):
        return self.sess.run(None, {self.input_name: x})[0]

    def output(self, result):
        return result

    def message_bytes(self, result) -> int | None:
        return None


class TenSEAL:
    name = "tenseal"

    def __init__(self, model):
        import tenseal_ref
        self.ref = tenseal_ref.TenSEALInference(model, n_threads=1)
        self.extra = {"poly_modulus_degree": self.ref.poly_modulus_degree,
                      "coeff_mod_bit_sizes": tenseal_ref.COEFF_MOD_BIT_SIZES,
                      "global_scale_bits": 26, "weights": "plaintext"}

    def run(self, x):
        return self.ref.infer(x)

    def output(self, result):
        return self.ref.decrypt(result)

    def message_bytes(self, result) -> int | None:
        return len(result)


class Ours:
    name = "ours"

    def __init__(self, onnx_path: Path, calibration, workdir: Path, model_id: str):
        from protected_nn.api import EdgeModel, OwnerModel, protect
        t = time.perf_counter()
        prot = protect(onnx_path, calibration=calibration)
        self.extra = {"protect_s": round(time.perf_counter() - t, 3),
                      "artifact_bytes": {k: len(v) for k, v in prot.artifacts.as_members().items()},
                      "weights": "encrypted"}
        self.extra["bundle_bytes"], self.extra["bundle_how"] = _bundle_size(prot.artifacts, workdir, model_id)
        try:  # the plan report (ring, moduli, per-layer costs) travels with the figures
            self.extra["plan_report"] = json.loads(json.dumps(prot.report, default=str))
        except (TypeError, ValueError):
            self.extra["plan_report"] = None
        self.edge = EdgeModel(prot.artifacts)
        self.owner = OwnerModel(prot.artifacts, prot.secret_key)

    def run(self, x):
        return self.edge.infer(x)

    def output(self, result):
        return self.owner.decrypt(result)

    def message_bytes(self, result) -> int | None:
        return len(result)


def _bundle_size(artifacts, workdir: Path, model_id: str) -> tuple[int, str]:
    """Size of the signed deployment bundle (keys included); the sum of the artifact members
    when protected_nn.bundle is not usable."""
    try:
        from protected_nn.bundle import generate_owner_key, write_bundle
        path = workdir / f"{model_id}.bundle"
        write_bundle(path, model_id, artifacts, generate_owner_key())
        return path.stat().st_size, "protected_nn.bundle.write_bundle"
    except Exception as exc:  # report what was measured instead, and why
        return sum(len(v) for v in artifacts.as_members().values()), f"sum of artifacts ({exc!r})"


def _stats(seconds: list[float]) -> dict:
    import numpy as np
    a = np.asarray(seconds)
    return {"median_s": float(np.median(a)), "p90_s": float(np.percentile(a, 90)),
            "min_s": float(a.min()), "n": int(a.size)}


def bench_network(net: str, args, workdir: Path) -> dict:
    import numpy as np
    from protected_nn import zoo

    model = getattr(zoo, net)(seed=args.seed)
    onnx_path = zoo.save(model, workdir / f"{net}.onnx")
    shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
    rng = np.random.default_rng(args.seed + 1)
    images = [rng.random(shape, dtype=np.float32) for _ in range(args.warmup + args.reps)]
    calibration = rng.random((8, *shape), dtype=np.float32)

    oracle = OnnxRuntime(onnx_path)
    res: dict = {"network": net, "input_shape": list(shape), "contenders": {}}
    live = []
    for name in args.only:
        t = time.perf_counter()
        try:
            c = {"onnxruntime": lambda: oracle,
                 "tenseal": lambda: TenSEAL(model),
                 "ours": lambda: Ours(onnx_path, calibration, workdir, f"{net}-bench")}[name]()
        except Exception as exc:
            print(f"[{net}] {name}: setup failed: {exc!r}", file=sys.stderr)
            res["contenders"][name] = {"error": f"{type(exc).__name__}: {exc}",
                                       "trace": traceback.format_exc(limit=3)}
            continue
        res["contenders"][name] = {"setup_s": round(time.perf_counter() - t, 3), **c.extra,
                                   "times": [], "cpu_times": [], "rel_err": [],
                                   "result_bytes": None}
        live.append(c)

    for i, x in enumerate(images):
        timed = i >= args.warmup
        order = live[i % len(live):] + live[:i % len(live)] if live else []
        expected = oracle.run(x)
        span = float(expected.max() - expected.min()) or 1.0
        for c in order:
            r = res["contenders"][c.name]
            if "error" in r:  # failed once: stop timing it, keep its first error
                continue
            try:
                t, cpu = time.perf_counter(), time.process_time()
                out = c.run(x)
                dt, dcpu = time.perf_counter() - t, time.process_time() - cpu
                y = np.asarray(c.output(out)).reshape(expected.shape)
            except Exception as exc:
                print(f"[{net}] {c.name}: run failed: {exc!r}", file=sys.stderr)
                r["error"] = f"{type(exc).__name__}: {exc}"
                continue
            if timed:
                r["times"].append(dt)
                r["cpu_times"].append(dcpu)
                r["rel_err"].append(float(np.abs(y - expected).max()) / span)
                r["result_bytes"] = c.message_bytes(out)
        print(f"[{net}] repetition {i + 1}/{len(images)}{'' if timed else ' (warm-up)'} done",
              file=sys.stderr, flush=True)

    for r in res["contenders"].values():
        if r.get("times"):
            r.update(_stats(r["times"]))
            r.update({f"cpu_{k}": v for k, v in _stats(r["cpu_times"]).items() if k != "n"})
            r["max_rel_err"] = max(r["rel_err"])
    ours, ts_ = res["contenders"].get("ours", {}), res["contenders"].get("tenseal", {})
    if ours.get("median_s") and ts_.get("median_s"):
        res["ratio_ours_tenseal"] = ours["median_s"] / ts_["median_s"]
        res["cpu_ratio_ours_tenseal"] = ours["cpu_median_s"] / ts_["cpu_median_s"]
    res["targets"] = _targets(net, res)
    return res


def _targets(net: str, res: dict) -> dict:
    ours = res["contenders"].get("ours", {})
    t: dict = {}
    if "max_rel_err" in ours:
        t[f"error <= {TARGET_REL_ERROR:g}"] = ours["max_rel_err"] <= TARGET_REL_ERROR
    if ours.get("result_bytes"):
        t["result <= 64 KB"] = ours["result_bytes"] <= TARGET_RESULT_BYTES
    if net == "tenseal_cnn" and "ratio_ours_tenseal" in res:
        t[f"latency <= {TARGET_RATIO_TENSEAL_CNN}x TenSEAL (wall)"] = res["ratio_ours_tenseal"] <= TARGET_RATIO_TENSEAL_CNN
        t[f"latency <= {TARGET_RATIO_TENSEAL_CNN}x TenSEAL (CPU)"] = res["cpu_ratio_ours_tenseal"] <= TARGET_RATIO_TENSEAL_CNN
    if net == "cryptonets" and "median_s" in ours:
        t[f"latency <= {TARGET_CRYPTONETS_S} s (wall)"] = ours["median_s"] <= TARGET_CRYPTONETS_S
        t[f"latency <= {TARGET_CRYPTONETS_S} s (CPU)"] = ours["cpu_median_s"] <= TARGET_CRYPTONETS_S
    if net == "cryptonets" and "bundle_bytes" in ours:
        t["bundle <= 64 MB"] = ours["bundle_bytes"] <= TARGET_CRYPTONETS_BUNDLE
    return t


def _fmt_ms(s) -> str:
    return "-" if s is None else (f"{s * 1e3:.2f}" if s < 0.1 else f"{s * 1e3:.0f}")


def _fmt_bytes(n) -> str:
    if n is None:
        return "-"
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 1024:.1f} KB"


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores (pinned to core {m['pinned_to']}), "
             f"Python {m['python']}, Pyfhel {m['Pyfhel']} (SEAL {m['seal_pyfhel']}), "
             f"TenSEAL {m['tenseal']}, onnxruntime {m['onnxruntime']}",
             f"Command: `{report['command']}`", "",
             "| network | contender | weights | median ms | p90 ms | vs TenSEAL | CPU median ms | "
             "CPU vs TenSEAL | max rel. error | result | bundle (keys incl.) | setup s |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for net in report["networks"]:
        ts_med = net["contenders"].get("tenseal", {}).get("median_s")
        ts_cpu = net["contenders"].get("tenseal", {}).get("cpu_median_s")
        for name, r in net["contenders"].items():
            if "median_s" not in r:
                lines.append(f"| {net['network']} | {name} | | {r.get('error', 'no result')[:80]} |" + " |" * 8)
                continue
            ratio = f"{r['median_s'] / ts_med:.3g}x" if ts_med else "-"
            cpu_ratio = f"{r['cpu_median_s'] / ts_cpu:.3g}x" if ts_cpu else "-"
            weights = r.get("weights", "plaintext")
            if name == "tenseal":
                weights += f", N={r['poly_modulus_degree']}"
            err = "-" if name == "onnxruntime" else f"{r['max_rel_err']:.2e}"
            lines.append(f"| {net['network']} | {name} | {weights} | {_fmt_ms(r['median_s'])} | "
                         f"{_fmt_ms(r['p90_s'])} | {ratio} | {_fmt_ms(r['cpu_median_s'])} | {cpu_ratio} | {err} | {_fmt_bytes(r.get('result_bytes'))} | "
                         f"{_fmt_bytes(r.get('bundle_bytes'))} | {r['setup_s']:.2f} |")
    targets = [f"- {net['network']}: {k}: {'PASS' if ok else 'FAIL'}"
               for net in report["networks"] for k, ok in net["targets"].items()]
    if targets:
        lines += ["", "Targets (issue 2):", *targets]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.sched_setaffinity(0, {args.core})  # before SEAL/onnxruntime start any thread
    report = {"command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None
              else " ".join(["bench_inference.py", *argv]),
              "reps": args.reps, "warmup": args.warmup, "seed": args.seed,
              "machine": machine_info(), "networks": []}
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for net in args.networks:
            report["networks"].append(bench_network(net, args, workdir))
    print(markdown(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    failed = any("error" in r for n in report["networks"] for r in n["contenders"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
