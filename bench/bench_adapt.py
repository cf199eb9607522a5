"""Issue 10's targets for `adapt` (needs the adapt, train and bench extras: torch, scikit-learn).

    .venv/bin/python bench/bench_adapt.py [--only digits|crowd] [--crowd-data real,rendered]
        [--encrypted-frames N] [--seeds 0,1,2] [--lr 1e-3] [--cache DIR] [--out bench/results/adapt.md]
        [--adapt-src DIR]     # adapt from another checkout (e.g. the old code), same originals via --cache

digits: a ReLU/BatchNorm/MaxPool CNN trained on Digits' training split; adapt with the training
split (and its labels); protect the adapted model; ENCRYPTED accuracy on the test split vs the
original's plaintext accuracy, top-1 agreement, and the encrypted latency next to a
square-activation model of the same shape (trained the same way), measured alternately.
crowd, real (default): the shipped crowd model's architecture with ReLU for x*x, trained by the
shipped trainer (training.fit.train: Mall frames 1-640 for the count, rendered scenes for the
incident); the owner adapts with his training inputs (real frames with and without motion, some
rendered frames) and the real frames' counts as labels (the incident column NaN: unknown); count
MAE on the held-out real frames 641-800 (training.eval_real's split), plaintext and encrypted.
crowd, rendered: the older case - a ReLU net of the shipped shape trained on rendered scenes,
adapted by distillation only (--rendered-labels 1: with their counts), count MAE on held-out
rendered sequences.
Both crowd cases: latency next to the shipped square-activation crowd model (same shape).
--cache keeps the rendered scenes and the trained originals, so runs compare on one original
(every original is seeded: the same command trains the same one on the same machine).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if "--adapt-src" in sys.argv:     # another checkout's backend_decryptor (old adapt code), side by side
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--adapt-src") + 1]).resolve()))

import torch  # noqa: E402

from backend_decryptor.adapt.run import DEFAULT_LR, adapt, onnxruntime_outputs  # noqa: E402
from bench import adapt_models as am  # noqa: E402
from bench.adapt_markdown import markdown  # noqa: E402
from protected_nn import api  # noqa: E402


def encrypted_outputs(prot, x: np.ndarray, input_shape) -> tuple[np.ndarray, list[float]]:
    edge = api.EdgeModel(prot.artifacts)
    owner = api.OwnerModel(prot.artifacts, prot.secret_key)
    outs, times = [], []
    for xi in x:
        t0 = time.perf_counter()
        payload = edge.infer(xi.reshape(input_shape))
        times.append(time.perf_counter() - t0)
        outs.append(owner.decrypt(payload).reshape(-1))
    return np.stack(outs), times


def alternate_latency(prots: dict, x: np.ndarray, input_shape, rounds: int) -> dict:
    """Median ms of EdgeModel.infer per model, the models taking turns (a loaded machine). Half
    the rounds with the gateway models loaded in one order, half in the other: the one loaded
    first ran 3-5% slower in CPU time whichever it was (same plan both ways)."""
    import gc
    times = {k: [] for k in prots}
    cpu = {k: [] for k in prots}
    for phase, names in enumerate((list(prots), list(reversed(prots)))):
        edges = {k: api.EdgeModel(prots[k].artifacts) for k in names}
        for r in range(phase * (rounds // 2), rounds if phase else rounds // 2):
            for k in names if r % 2 == 0 else list(reversed(names)):
                t0, c0 = time.perf_counter(), time.process_time()
                edges[k].infer(x[r % len(x)].reshape(input_shape))
                times[k].append(1000 * (time.perf_counter() - t0))
                cpu[k].append(1000 * (time.process_time() - c0))
        del edges
        gc.collect()
    return {k: float(np.median(v)) for k, v in times.items()} | {
        f"{k} cpu": float(np.median(v)) for k, v in cpu.items()}


def digits(work: Path, args, log) -> dict:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    x_tr, x_te, y_tr, y_te = train_test_split(x, d.target, test_size=0.2, stratify=d.target, random_state=0)
    shape = (1, 1, 8, 8)
    ce = torch.nn.functional.cross_entropy
    nets = {}
    for name, square in (("relu", False), ("square", True)):
        cached = Path(args.cache) / f"digits_{name}.onnx" if args.cache else None
        if cached and cached.is_file():      # one original for side-by-side runs
            nets[name] = cached
            continue
        torch.manual_seed(0)                  # the initial weights too: one original per command
        net = am.digits_net(square=square)
        yt = torch.from_numpy(y_tr)
        log(f"digits: training the {name} CNN")
        am.fit(net, x_tr, lambda out, idx: ce(out, yt[idx]), epochs=40, log=log)
        nets[name] = am.to_onnx(net, shape, cached or work / f"digits_{name}.onnx",
                                {"fhe_edge.model_card": f"Digits CNN ({name})"})
    acc = {k: float(np.mean(onnxruntime_outputs(_load(p), x_te, "input").argmax(1) == y_te))
           for k, p in nets.items()}
    log(f"digits: plaintext test accuracy relu {acc['relu']:.4f}, square {acc['square']:.4f}")
    t0 = time.perf_counter()
    res = adapt(nets["relu"], x_tr, y_tr, out=work / "digits_adapted.onnx", epochs=args.epochs, log=log,
                **_options(args))
    adapt_s = time.perf_counter() - t0
    log(res.text)
    plain_a = onnxruntime_outputs(res.model, x_te, "input")
    plain_o = onnxruntime_outputs(_load(nets["relu"]), x_te, "input")
    prot = api.protect(work / "digits_adapted.onnx")
    prot_sq = api.protect(nets["square"], calibration=x_tr[:16].reshape((16,) + shape))
    log(prot.report_text)
    n = min(args.encrypted_frames or len(x_te), len(x_te))
    enc, _ = encrypted_outputs(prot, x_te[:n], shape)
    lat = alternate_latency({"adapted": prot, "square": prot_sq}, x_te, shape, args.latency_rounds)
    return {
        "train": len(x_tr), "test": len(x_te), "encrypted_test": n, "adapt_seconds": adapt_s,
        "accuracy_original_plain": acc["relu"], "accuracy_square_plain": acc["square"],
        "accuracy_adapted_plain": float(np.mean(plain_a.argmax(1) == y_te)),
        "accuracy_adapted_encrypted": float(np.mean(enc.argmax(1) == y_te[:n])),
        "accuracy_original_plain_same_frames": float(np.mean(plain_o[:n].argmax(1) == y_te[:n])),
        "agreement_encrypted_vs_original": float(np.mean(enc.argmax(1) == plain_o[:n].argmax(1))),
        "max_abs_encrypted_minus_plain": float(np.abs(enc - plain_a[:n]).max()),
        "fidelity_rel_error": prot.report["fidelity"]["max_rel_error"],
        "held_back": res.report["held_back"],
        "depth": res.report["plan_adapted"], "plan_original": res.report["plan_original"],
        "estimated_ms_adapted": prot.report["estimated_latency_ms"],
        "estimated_ms_square": prot_sq.report["estimated_latency_ms"],
        "median_ms": lat,
    }


def crowd(work: Path, args, log) -> dict:
    from training.dataset import synthetic_set
    from training.eval import heldout_set
    from training.train import CHUNK_LEN, CHUNKS, TRAIN_SIZES
    from training.dataset import LabelledSet
    t0 = time.perf_counter()
    cache = Path(args.cache) / f"crowd-{args.crowd_sequences}-{args.crowd_heldout}.npz" if args.cache else None
    if cache and cache.is_file():        # rendering is deterministic: a cached set is the same data
        z = np.load(cache, allow_pickle=False)
        data, held = (LabelledSet(z[f"{p}x"], z[f"{p}count"], z[f"{p}incident"], z[f"{p}kind"]) for p in ("", "h"))
    else:
        data = synthetic_set(range(args.crowd_sequences), n_frames=100, sizes=TRAIN_SIZES, chunks=CHUNKS,
                             chunk_len=CHUNK_LEN, workers=2)
        held = heldout_set(args.crowd_heldout)
        if cache:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, x=data.x, count=data.count, incident=data.incident, kind=data.kind,
                     hx=held.x, hcount=held.count, hincident=held.incident, hkind=held.kind)
    log(f"crowd: {len(data)} training frames, {len(held)} held-out frames ({time.perf_counter() - t0:.0f} s)")
    epochs = args.crowd_epochs or 30
    name = f"crowd-rendered-relu-{args.crowd_sequences}-{epochs}.onnx"       # one original for every run
    original = Path(args.cache) / name if args.cache else work / name
    if original.is_file():
        return _crowd_rendered_adapt(work, args, log, data, held, original)
    torch.manual_seed(0)
    net = am.crowd_relu_net()
    yc = torch.from_numpy(data.count) / 10.0
    yi = torch.from_numpy(data.incident)
    bce = torch.nn.BCEWithLogitsLoss()

    def loss(out, idx):
        return torch.nn.functional.smooth_l1_loss(out[:, 0] / 10.0, yc[idx], beta=0.2) \
            + 0.5 * bce(out[:, 1], yi[idx])
    am.fit(net, data.x, loss, epochs=epochs, batch=128, log=log)
    am.to_onnx(net, (1, 2, 32, 32), original, {"fhe_edge.model_card": "crowd model, ReLU version"})
    return _crowd_rendered_adapt(work, args, log, data, held, original)


def _crowd_rendered_adapt(work: Path, args, log, data, held, original) -> dict:
    out_o = onnxruntime_outputs(_load(original), held.x, "input")
    # the counts the original was trained on, as the owner's labels (the incident logit: NaN)
    labels = np.stack([data.count, np.full(len(data), np.nan, np.float32)], 1) if args.rendered_labels else None
    by_seed = {}                # one original, adapted once per seed: adapt's own spread
    for seed in reversed(args.seeds):     # the last one run is the first seed: its model is kept
        t0 = time.perf_counter()
        res = adapt(original, data.x, labels, out=work / "crowd_adapted.onnx", epochs=args.epochs, seed=seed,
                    **_options(args),
                    lr=args.lr, log=log)
        adapt_s = time.perf_counter() - t0
        out_a = onnxruntime_outputs(res.model, held.x, "input")
        by_seed[seed] = float(np.abs(out_a[:, 0] - held.count).mean())
    log(res.text)               # the first seed's model goes on to protect
    prot = api.protect(work / "crowd_adapted.onnx")
    shipped = Path(__file__).resolve().parents[1] / "models" / "crowd_incident.onnx"
    prot_sq = api.protect(shipped)
    step = max(1, len(held.x) // max(1, args.crowd_encrypted))
    sel = np.arange(0, len(held.x), step)[:args.crowd_encrypted]
    enc, _ = encrypted_outputs(prot, held.x[sel], (1, 2, 32, 32))
    lat = alternate_latency({"adapted": prot, "square (shipped)": prot_sq}, held.x, (1, 2, 32, 32),
                            args.latency_rounds)
    mae = lambda o, idx=slice(None): float(np.abs(o[:, 0] - held.count[idx]).mean())  # noqa: E731
    return {
        "train": len(data), "heldout": len(held), "encrypted_frames": len(sel), "adapt_seconds": adapt_s,
        "labels": labels is not None,
        "count_mae_original": mae(out_o), "count_mae_adapted": mae(out_a), "adapt_seed": args.seeds[0],
        "count_mae_adapted_by_seed": by_seed, "count_mae_adapted_median": float(np.median(list(by_seed.values()))),
        "count_mae_original_encrypted_frames": mae(out_o[sel], sel),
        "count_mae_adapted_encrypted": mae(enc, sel),
        "fidelity_rel_error": prot.report["fidelity"]["max_rel_error"],
        "held_back": res.report["held_back"], "depth": res.report["plan_adapted"],
        "estimated_ms_adapted": prot.report["estimated_latency_ms"],
        "estimated_ms_square": prot_sq.report["estimated_latency_ms"], "median_ms": lat,
    }


SHIPPED_STEPS = 8520          # the shipped trainer's steps (models/README.md): the ReLU original gets as many


def _rendered(args, log):
    """The rendered training scenes (incident output; training.train's sizes and chunks), cached."""
    from training.dataset import LabelledSet, synthetic_set
    from training.train import CHUNK_LEN, CHUNKS, TRAIN_SIZES
    cache = Path(args.cache) / f"rendered-{args.crowd_sequences}.npz" if args.cache else None
    if cache and cache.is_file():        # rendering is deterministic: a cached set is the same data
        z = np.load(cache, allow_pickle=False)
        return LabelledSet(z["x"], z["count"], z["incident"], z["kind"])
    t0 = time.perf_counter()
    d = synthetic_set(range(args.crowd_sequences), n_frames=100, sizes=TRAIN_SIZES, chunks=CHUNKS,
                      chunk_len=CHUNK_LEN, workers=2)
    log(f"crowd-real: rendered {len(d)} frames ({time.perf_counter() - t0:.0f} s)")
    if cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, x=d.x, count=d.count, incident=d.incident, kind=d.kind)
    return d


def _real_original(work: Path, args, arch, rendered, log) -> tuple[Path, int]:
    """The ReLU version of the shipped model trained by the shipped loop (training.fit.train) on
    the Mall training frames (count) and the rendered scenes (incident); cached as ONNX."""
    from training.train import real_set
    from training.fit import Weights
    w = Weights()
    per_epoch = max(-(-640 // w.real_per_batch), -(-len(rendered) // w.synthetic_per_batch))
    epochs = args.crowd_epochs or max(1, round(SHIPPED_STEPS / per_epoch))
    name = f"crowd-real-relu-{args.crowd_sequences}-{epochs}-{args.crowd_train_seed}.onnx"
    path = Path(args.cache) / name if args.cache else work / name
    if path.is_file():
        return path, epochs
    t0 = time.perf_counter()
    log(f"crowd-real: training the ReLU original ({epochs} epochs x {per_epoch} steps)")
    net = am.train_crowd_relu(arch, real_set(arch), rendered, epochs=epochs, seed=args.crowd_train_seed, log=log)
    am.to_onnx(am.crowd_relu_sequential(net), (1, 2) + tuple(arch.size), path,
               {"fhe_edge.model_card": "crowd model, ReLU version (shipped architecture and trainer)"})
    log(f"crowd-real: original trained in {time.perf_counter() - t0:.0f} s")
    return path, epochs


def crowd_real(work: Path, args, log) -> dict:
    """The ReLU version of the shipped model trained the shipped way on real Mall frames; the
    owner adapts with his training inputs (real frames with and without motion, rendered scenes)
    and the real frames' count labels (--labels; the incident column unknown: NaN); count MAE on
    the held-out real frames 641-800 (training.eval_real's split)."""
    from training import mall
    from training.model import Arch
    arch = Arch()
    rendered = _rendered(args, log)
    original, train_epochs = _real_original(work, args, arch, rendered, log)
    tr, va = mall.load(arch.size, "train"), mall.load(arch.size, "validation")
    x_real = np.concatenate([mall.inputs(tr, False), mall.inputs(tr, True)])
    pick = np.linspace(0, len(rendered) - 1, min(args.crowd_adapt_rendered, len(rendered))).astype(int)
    x = np.concatenate([x_real, rendered.x[pick]])
    y = np.full((len(x), 2), np.nan, np.float32)
    y[:len(x_real), 0] = np.tile(tr.count, 2)
    labels = y if args.crowd_labels else None
    held = {"no_motion": mall.inputs(va, False), "motion_0.5s": mall.inputs(va, True)}
    mae = lambda o, idx=slice(None): float(np.abs(o[:, 0] - va.count[idx]).mean())  # noqa: E731
    out_o = {k: onnxruntime_outputs(_load(original), v, "input") for k, v in held.items()}
    log(f"crowd-real: original count MAE {', '.join(f'{k} {mae(v):.3f}' for k, v in out_o.items())}")
    by_seed, seconds = {}, {}
    for seed in reversed(args.seeds):     # the last one run is the first seed: its model is kept
        t0 = time.perf_counter()
        res = adapt(original, x, labels, out=work / "crowd_real_adapted.onnx", epochs=args.epochs, seed=seed,
                    **_options(args),
                    lr=args.lr, log=log)
        seconds[seed] = time.perf_counter() - t0
        out_a = {k: onnxruntime_outputs(res.model, v, "input") for k, v in held.items()}
        by_seed[seed] = {k: mae(v) for k, v in out_a.items()}
        log(f"crowd-real: seed {seed}: adapted count MAE {by_seed[seed]} ({seconds[seed]:.0f} s)")
    log(res.text)
    med = {k: float(np.median([v[k] for v in by_seed.values()])) for k in held}
    r = {
        "train": len(x), "train_real": len(x_real), "train_rendered": len(pick), "labels": bool(labels is not None),
        "original": str(original.name), "original_epochs": train_epochs, "heldout": len(va),
        "adapt_seconds": seconds[args.seeds[0]], "adapt_seconds_by_seed": seconds,
        "count_mae_original": {k: mae(v) for k, v in out_o.items()},
        "count_mae_adapted": by_seed[args.seeds[0]], "adapt_seed": args.seeds[0],
        "count_mae_adapted_by_seed": by_seed, "count_mae_adapted_median": med,
        "kept_epoch": res.report.get("kept_epoch"), "epochs": args.epochs, "held_back": res.report["held_back"],
        "depth": res.report["plan_adapted"],
    }
    from protected_nn.errors import ProtectedNNError
    if args.plain_only:
        return r
    try:
        prot = api.protect(work / "crowd_real_adapted.onnx")
    except ProtectedNNError as exc:         # the old adapt code's far vertices overflow here
        log(f"crowd-real: protect failed: {exc}")
        return r | {"protect_error": str(exc).splitlines()[0]}
    shipped = Path(__file__).resolve().parents[1] / "models" / "crowd_incident.onnx"
    prot_sq = api.protect(shipped)
    sel = np.linspace(0, len(va) - 1, min(args.crowd_encrypted, len(va))).astype(int)
    enc, _ = encrypted_outputs(prot, held["no_motion"][sel], (1, 2) + tuple(arch.size))
    lat = alternate_latency({"adapted": prot, "square (shipped)": prot_sq}, held["no_motion"],
                            (1, 2) + tuple(arch.size), args.latency_rounds)
    return r | {
        "encrypted_frames": len(sel),
        "count_mae_original_encrypted_frames": mae(out_o["no_motion"][sel], sel),
        "count_mae_adapted_plain_encrypted_frames": mae(out_a["no_motion"][sel], sel),
        "count_mae_adapted_encrypted": mae(enc, sel),
        "max_abs_count_encrypted_minus_plain": float(np.abs(enc[:, 0] - out_a["no_motion"][sel, 0]).max()),
        "fidelity_rel_error": prot.report["fidelity"]["max_rel_error"],
        "estimated_ms_adapted": prot.report["estimated_latency_ms"],
        "estimated_ms_square": prot_sq.report["estimated_latency_ms"], "median_ms": lat,
    }


def _options(args) -> dict:
    """--train-options (train.TrainConfig fields, for ablations); nothing for the old code."""
    return {"train_options": json.loads(args.train_options)} if args.train_options else {}


def _load(path):
    import onnx
    return onnx.load(str(path))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["digits", "crowd"])
    ap.add_argument("--crowd-data", default="real", help="crowd cases, comma-separated: real (the ReLU "
                    "version trained the shipped way on Mall frames), rendered (the older rendered-scene case)")
    ap.add_argument("--crowd-adapt-rendered", type=int, default=1280,
                    help="crowd-real: rendered frames in the owner's adapt data (besides the 1280 real inputs)")
    ap.add_argument("--crowd-labels", type=int, default=1, help="crowd-real: 1 = adapt with the count labels "
                    "(0: distillation only, as the old code must)")
    ap.add_argument("--rendered-labels", type=int, default=0, help="crowd-rendered: 1 = adapt with the rendered "
                    "counts as labels (0, the default: distillation only; labels made it worse there, see results)")
    ap.add_argument("--crowd-train-seed", type=int, default=1, help="crowd-real: torch seed of the original (shipped: 1)")
    ap.add_argument("--train-options", help='crowd-real/digits/rendered: JSON of train.TrainConfig fields for '
                    'adapt, e.g. \'{"keep_best": false}\' (ablations)')
    ap.add_argument("--plain-only", action="store_true", help="crowd-real: plaintext figures only (no protect)")
    ap.add_argument("--adapt-src", help="a checkout whose backend_decryptor/ (adapt) is used instead of this one")
    ap.add_argument("--epochs", type=int, default=30, help="adapt epochs")
    ap.add_argument("--lr", type=float, default=DEFAULT_LR, help="adapt learning rate (crowd)")
    ap.add_argument("--seeds", type=lambda v: [int(s) for s in v.split(",")], default=[0],
                    help="crowd: adapt seeds, comma-separated, one original (the first goes on to protect)")
    ap.add_argument("--encrypted-frames", type=int, default=0, help="Digits test images run encrypted (0: all)")
    ap.add_argument("--crowd-sequences", type=int, default=300)
    ap.add_argument("--crowd-heldout", type=int, default=24)
    ap.add_argument("--crowd-epochs", type=int, default=0,
                    help="epochs training the crowd original (0: rendered 30, real as many steps as the shipped trainer)")
    ap.add_argument("--crowd-encrypted", type=int, default=120)
    ap.add_argument("--latency-rounds", type=int, default=21)
    ap.add_argument("--out", default="bench/results/adapt.md")
    ap.add_argument("--json")
    ap.add_argument("--cache", help="folder to keep the rendered crowd scenes in (re-used if present)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    log = lambda m: print(m, flush=True)  # noqa: E731
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        bad = set(args.crowd_data.split(",")) - {"real", "rendered"}
        if bad:
            raise SystemExit(f"--crowd-data: unknown case(s) {sorted(bad)}; use real and/or rendered")
        cases = [("digits", "digits", digits)] + [
            ("crowd", {"real": "crowd-real", "rendered": "crowd"}[c], {"real": crowd_real, "rendered": crowd}[c])
            for c in args.crowd_data.split(",")]
        for group, name, fn in cases:
            if args.only in (None, group):
                results[name] = fn(Path(tmp), args, log)
                log(json.dumps(results[name], indent=1))
    text = markdown(results, argv)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
