"""adapt(): check the data, hold back a tenth, convert, fit the polynomials, fine-tune, export,
measure on the held-back tenth with onnxruntime, plan with protect's planner. Deterministic for
a seed (torch seed, deterministic algorithms, one thread while it runs)."""
from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from backend_decryptor.adapt import AdaptError, require_torch

CALIBRATION_SAMPLES = 16
# Adam's learning rate: the adapted model should move as little from the original as it must;
# on the ReLU crowd model 1e-3 followed it better on unseen scenes than 3e-3 (held-out count
# MAE, median of 3 seeds, 9.34 vs 9.88 people; original 7.55) at equal Digits accuracy.
DEFAULT_LR = 1e-3
MIN_INPUTS = 10


@dataclass
class AdaptResult:
    model: onnx.ModelProto
    report: dict
    text: str
    held_back: np.ndarray        # indices into the data that were not trained on


def check_data(x, input_shape: tuple[int, ...]) -> np.ndarray:
    """(N, *input shape) or (N, *input shape without its batch 1) -> float32 (N, *shape[1:])."""
    if x is None:
        raise AdaptError("no data: adapt needs the owner's inputs (--data X.npy)")
    x = np.asarray(x)
    if x.size == 0 or x.ndim == 0:
        raise AdaptError(f"no data: the data array is empty (shape {x.shape})")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise AdaptError(f"the data must be real numbers, got dtype {x.dtype}")
    per = tuple(input_shape[1:])
    if x.shape[1:] == tuple(input_shape):
        x = x.reshape((len(x),) + per)
    elif x.shape[1:] != per:
        raise AdaptError(f"data of shape {x.shape} does not match the model input {tuple(input_shape)}: "
                         f"give N inputs as (N, {', '.join(map(str, per))}) or (N, *{tuple(input_shape)})")
    if len(x) < MIN_INPUTS:
        raise AdaptError(f"adapt needs at least {MIN_INPUTS} inputs (a tenth is held back), got {len(x)}")
    if not np.all(np.isfinite(x)):
        raise AdaptError("the data holds non-finite values (NaN or inf)")
    return np.ascontiguousarray(x, dtype=np.float32)


def check_labels(labels, n: int, out_shape: tuple[int, ...]) -> np.ndarray | None:
    if labels is None:
        return None
    y = np.asarray(labels)
    per = int(np.prod(out_shape[1:])) if len(out_shape) > 1 else int(np.prod(out_shape))
    if y.ndim == 0 or len(y) != n:
        raise AdaptError(f"labels: {len(y) if y.ndim else 'a scalar'} label(s) for {n} inputs")
    if np.issubdtype(y.dtype, np.integer) and y.ndim == 1 and per > 1:
        if y.min() < 0 or y.max() >= per:
            raise AdaptError(f"labels: class ids must be in 0..{per - 1} (the model has {per} outputs)")
        return y.astype(np.int64)
    if np.issubdtype(y.dtype, np.number) and y.size == n * per:
        y = y.reshape((n,) + tuple(out_shape[1:])).astype(np.float32)
        if np.isinf(y).any():
            raise AdaptError("labels: infinite values (use NaN for an output whose target is unknown)")
        if np.isnan(y).all():
            raise AdaptError("labels: every target is NaN (unknown); leave --labels out to distil only")
        return y
    raise AdaptError(f"labels of shape {y.shape} ({y.dtype}) fit neither class ids (N,) nor "
                     f"targets shaped like the output {tuple(out_shape)}")


def split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    hold = max(1, int(round(n / 10)))
    return np.sort(perm[hold:]), np.sort(perm[:hold])


def check_writable(option: str, path) -> None:
    """Before any training: AdaptError naming `option` when `path` could not be written at the
    end (its folder is made then, as `write_output` does). Checked for real: a probe file in the
    nearest folder that exists (root ignores permission bits, a read-only mount does not)."""
    from service_common.preflight import nearest_existing, not_a_folder
    path = Path(path)
    if path.is_dir():
        raise AdaptError(f"{option} {path}: is a folder: give the file to write")
    if (problem := not_a_folder(option, path, path.parent)):
        raise AdaptError(problem)
    folder = nearest_existing(path.absolute().parent)
    probe = folder / f".{path.name}.probe-{os.getpid()}"
    try:
        with open(probe, "xb"):
            pass
        probe.unlink()
    except OSError as e:
        raise AdaptError(f"{option} {path}: cannot write in {folder}: {e.strerror or e}") from None


def write_output(option: str, path, data: bytes) -> None:
    """Make the folder, then write atomically (no partial file, no temp file left on failure)."""
    from protected_nn.npy_files import make_folder, write_file
    make_folder(Path(path).parent, option)
    write_file(path, data, option)


def onnxruntime_outputs(model: onnx.ModelProto, x: np.ndarray, input_name: str) -> np.ndarray:
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return np.stack([sess.run(None, {input_name: x[i:i + 1]})[0][0] for i in range(len(x))])


def adapt(model_path, x, labels=None, *, out: str | Path, degree: int = 2, epochs: int = 30,
          seed: int = 0, lr: float = DEFAULT_LR, log=print, train_options: dict | None = None) -> AdaptResult:
    """train_options: further train.TrainConfig fields (warmup, keep_best, keep_zeros,
    max_vertex, batch), for studies; the defaults are what the CLI runs."""
    torch = require_torch()
    if not isinstance(degree, int) or not 1 <= degree <= 8:
        raise AdaptError(f"--degree must be an integer in 1..8, got {degree!r}")
    if epochs < 0:
        raise AdaptError(f"--epochs must be >= 0, got {epochs}")
    for target in (Path(out), calibration_path(out)):     # a failed write must not cost the training
        check_writable("--out", target)
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)            # one reduction order: the same seed gives the same bytes
    try:
        return _adapt(model_path, x, labels, Path(out), degree, epochs, seed, lr, log, dict(train_options or {}))
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _adapt(model_path, x, labels, out, degree, epochs, seed, lr, log, opts) -> AdaptResult:
    from backend_decryptor.adapt import export, report, train
    from backend_decryptor.adapt.onnx_graph import load_graph
    from backend_decryptor.adapt.torch_model import OnnxModule
    from protected_nn import api

    t_start = time.perf_counter()
    g = load_graph(model_path)
    x = check_data(x, g.input_shape)
    out_shape = g.shapes[g.output_name]
    y = check_labels(labels, len(x), out_shape)
    if not g.activations() and not g.pools():
        raise AdaptError("nothing to adapt: the model has no Relu/LeakyRelu/Clip/Sigmoid/Tanh/"
                         "Softplus/MaxPool; protect it as it is")
    train_idx, hold_idx = split(len(x), seed)
    module = OnnxModule(g)
    _check_conversion(module, g, x[train_idx[:8]])
    teacher = train.predict(module, x[train_idx], "original")
    cfg = train.TrainConfig(degree=degree, epochs=epochs, seed=seed, lr=lr, **opts)
    train.build_polynomials(module, x[train_idx], degree, seed, cfg.max_vertex)
    hold_teacher = train.predict(module, x[hold_idx], "original")
    scale = train.teacher_scale(teacher)

    y_tr = None if y is None else y[train_idx]
    y_hold = None if y is None else torch_from(y[hold_idx])
    yscale = train.label_scale(y_tr) if y is not None and y.dtype != np.int64 else None

    def hold_loss() -> float:        # distillation (+ labels): what fine_tune keeps the best epoch by
        return train.held_back_objective(module, torch_from(x[hold_idx]), torch_from(hold_teacher),
                                         y_hold, scale, yscale)

    loss_before = hold_loss()
    log(f"adapt: {len(g.activations())} activation(s) -> degree-{degree} polynomials, "
        f"{len(g.pools())} MaxPool -> AveragePool; {len(train_idx)} training inputs, "
        f"{len(hold_idx)} held back; held-back loss of the fits alone {loss_before:.4g}"
        + (" (distillation + labels)" if y is not None else ""))
    t0 = time.perf_counter()
    # the held-back tenth picks the epoch kept (never trained on; the report is measured on it too)
    history = train.fine_tune(module, x[train_idx], teacher, None if y is None else y[train_idx], cfg, log,
                              held=(x[hold_idx], hold_teacher, None if y is None else y[hold_idx]))
    train_s = time.perf_counter() - t0
    loss_after = hold_loss()
    if not loss_after < loss_before or not math.isfinite(loss_after):
        raise AdaptError(f"adapt did not improve the model: held-back loss "
                         f"{loss_before:.4g} with the fitted polynomials, {loss_after:.4g} after "
                         f"{epochs} epoch(s); kept the original, wrote nothing to {out} "
                         f"(try more --epochs, more data or a higher --degree)")
    trained_ranges = train.observed_ranges(module, x[train_idx], "adapted")
    fit_ranges = {n: a.fit_ranges() for n, a in module.acts.items()}
    path = Path(model_path) if isinstance(model_path, (str, Path)) else None
    record = {
        "tool": "backend-decryptor adapt", "degree": degree, "epochs": epochs, "seed": seed, "lr": lr,
        "warmup": cfg.warmup, "max_vertex": cfg.max_vertex,
        "kept_epoch": next((h["epoch"] for h in history if h.get("kept")), 0 if cfg.keep_best else epochs),
        "source": {"file": path.name if path else "<model>",
                   "sha256": hashlib.sha256(path.read_bytes()).hexdigest() if path else ""},
        "samples": {"train": int(len(train_idx)), "held_back": int(len(hold_idx))},
        "activations": [{"node": n, "op": a.op, "channels": len(fit_ranges[n]),
                         "fit_range": fit_ranges[n],
                         "trained_range": np.round(np.stack(trained_ranges[n], 1), 6).tolist()}
                        for n, a in module.acts.items()],
        "maxpool_replaced": [p.name for p in g.pools()],
    }
    adapted = export.adapted_model(g, module, record)
    original = g.model
    outs_o = onnxruntime_outputs(original, x[hold_idx], g.input_name)
    outs_a = onnxruntime_outputs(adapted, x[hold_idx], g.input_name)
    metrics = report.held_back_metrics(outs_o, outs_a, None if y is None else y[hold_idx])
    cal = _calibration(x[train_idx], train.predict(module, x[train_idx], "adapted"), g.input_shape, seed)
    r = dict(record) | {
        "out": str(out), "held_back": metrics, "held_back_indices": hold_idx.tolist(),
        "loss_before": loss_before, "loss_after": loss_after, "history": history,
        "train_seconds": train_s, "outside_range": train.outside_share(module, x[hold_idx]),
        "plan_adapted": _plan(api, adapted, cal), "plan_original": _plan(api, original, cal)}
    r["seconds"] = time.perf_counter() - t_start
    write_output("--out", out, adapted.SerializeToString())
    from protected_nn.npy_files import save_array
    save_array(calibration_path(out), cal, "--out")                # protect's default calibration
    return AdaptResult(model=adapted, report=r, text=report.render(r), held_back=hold_idx)


def calibration_path(out) -> Path:
    return Path(out).with_suffix(".calibration.npy")


def torch_from(a: np.ndarray):
    import torch
    return torch.from_numpy(a)


def _check_conversion(module, g, x: np.ndarray) -> None:
    """The PyTorch module must compute what onnxruntime computes before anything is trained."""
    from backend_decryptor.adapt.train import predict
    ref = onnxruntime_outputs(g.model, x, g.input_name)
    got = predict(module, x, "original")
    err = float(np.abs(ref - got.reshape(ref.shape)).max())
    if not err <= 1e-3 * (1.0 + float(np.abs(ref).max())):
        raise AdaptError(f"internal: the PyTorch conversion differs from onnxruntime by {err:.3g}")


def _calibration(x: np.ndarray, outputs: np.ndarray, input_shape, seed: int) -> np.ndarray:
    """Training inputs for protect's calibration: the one with the largest output (it sizes the
    result prime) and a seeded sample of the rest; shaped (N, *input shape)."""
    biggest = int(np.abs(outputs.reshape(len(x), -1)).max(axis=1).argmax())
    rng = np.random.default_rng(seed + 1)
    rest = rng.permutation([i for i in range(len(x)) if i != biggest])[:CALIBRATION_SAMPLES - 1]
    pick = [biggest] + [int(i) for i in rest]
    return x[pick].reshape((len(pick),) + tuple(input_shape))


def _plan(api, model: onnx.ModelProto, cal: np.ndarray) -> dict:
    from protected_nn.errors import ProtectedNNError
    try:
        p = api.estimate_plan(model, calibration=cal)
    except (ProtectedNNError, ValueError) as exc:      # the planner raises ValueError for some sizes
        return {"error": str(exc).splitlines()[0]}
    return {k: p[k] for k in ("depth", "ring_dimension", "estimated_latency_ms")}
