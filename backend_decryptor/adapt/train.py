"""Fine-tuning: polynomials from the observed ranges, then distillation on the original's outputs.

Loss = MSE(adapted, original) per output element, normalised by the original's variance on the
training inputs (so a count and a logit weigh alike), + the labels' loss when labels are given
(cross-entropy for class ids, normalised MSE for targets; NaN marks a target not known), +
RANGE_WEIGHT x the mean squared distance by which activation inputs leave their polynomial's
range (in units of the range's half width): the encrypted evaluation must see the ranges the
polynomials were trained on. Each batch also holds mixes of two of its inputs, distilled on the
original's outputs for them (_mixed). Adam, linear warm-up then cosine decay, gradient norm
clipped at 1; weights that are exactly 0 in the original stay 0; degree-2 vertices stay within
MAX_VERTEX half-widths. After each epoch the held-back tenth is scored (distillation + labels)
and the best epoch's weights are the ones kept.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from backend_decryptor.adapt import require_torch
from backend_decryptor.adapt.onnx_graph import attributes
from backend_decryptor.adapt.polynomial import PolyActivation, activation_function, channel_ranges
from backend_decryptor.adapt.torch_model import OnnxModule, clip_bounds

torch = require_torch()
RANGE_WEIGHT = 10.0
MIX_SHARE = 0.5          # share of each batch replaced by mixes of two inputs (teacher run on them)
EVAL_BATCH = 256
MAX_VERTEX = 8.0          # see PolyActivation.bound_vertex and docs/adapt.md (crowd study)


@dataclass
class TrainConfig:
    degree: int = 2
    epochs: int = 30
    seed: int = 0
    lr: float = 1e-3          # run.DEFAULT_LR is what adapt passes
    batch: int = 64
    warmup: float = 0.05      # share of the steps the learning rate warms up over
    keep_best: bool = True    # keep the epoch with the lowest held-back loss (needs `held`)
    keep_zeros: bool = True   # weights exactly 0 in the original stay 0 (_structural_zeros)
    max_vertex: float = MAX_VERTEX   # degree 2: vertex within this many half-widths (bound_vertex)


def predict(module: OnnxModule, x: np.ndarray, mode: str) -> np.ndarray:
    module.mode = mode
    with torch.no_grad():
        outs = [module(torch.from_numpy(x[i:i + EVAL_BATCH])) for i in range(0, len(x), EVAL_BATCH)]
    return torch.cat(outs).numpy()


def observed_ranges(module: OnnxModule, x: np.ndarray, mode: str) -> dict[str, tuple]:
    """Per activation: per-channel (min, max) of its inputs over x."""
    module.capture = {}
    try:
        predict(module, x, mode)
        ranges = {}
        for name, parts in module.capture.items():
            vals = torch.cat(parts)
            ranges[name] = channel_ranges(vals, vals.shape[1] if vals.dim() > 1 else 1)
    finally:
        module.capture = None
    return ranges


def outside_share(module: OnnxModule, x: np.ndarray) -> dict:
    """Share of the polynomials' input values on x outside their ranges, and the largest
    |normalised input| (1 = the edge of the range)."""
    module.capture = {}
    try:
        predict(module, x, "adapted")
        outside = total = 0
        worst = 0.0
        for name, parts in module.capture.items():
            t = module.acts[name].normalised(torch.cat(parts)).abs()
            outside += int((t > 1).sum())
            total += t.numel()
            worst = max(worst, float(t.max()))
    finally:
        module.capture = None
    return {"share": outside / max(1, total), "max_normalised": worst}


FIT_SAMPLES = 4096       # observed inputs per channel the initial fit uses (a seeded subsample)


def build_polynomials(module: OnnxModule, x_train: np.ndarray, degree: int, seed: int = 0,
                      max_vertex: float = MAX_VERTEX) -> None:
    """One PolyActivation per activation, in graph order, each from the inputs it gets on the
    training data once the activations before it are polynomials already (so a later range
    includes the drift the earlier replacements cause; activations not replaced yet compute
    the original function)."""
    rng = np.random.default_rng(seed)
    for node in module.g.activations():
        module.capture = {}
        try:
            predict(module, x_train, "adapted")
            v = torch.cat(module.capture[node.name])
        finally:
            module.capture = None
        v = (v[:, None] if v.dim() == 1 else v).transpose(0, 1).reshape(v.shape[1] if v.dim() > 1 else 1, -1).numpy()
        pick = rng.choice(v.shape[1], size=min(FIT_SAMPLES, v.shape[1]), replace=False)
        f = activation_function(node.op_type, attributes(node), clip_bounds(node, module.g)
                                if node.op_type == "Clip" else (None, None))
        module.acts[node.name] = PolyActivation(node.name, node.op_type, f, v.min(axis=1), v.max(axis=1),
                                                degree, samples=list(v[:, pick]))
        module.acts[node.name].bound_vertex(max_vertex)


class _RangeProbe:
    """Collects each polynomial's range excess during one forward pass."""

    def __init__(self, module: OnnxModule):
        self.terms = []
        self.handles = [act.register_forward_pre_hook(self._hook) for act in module.acts.values()]

    def _hook(self, act, args):
        self.terms.append(PolyActivation.excess(act.normalised(args[0])))

    def take(self):
        terms, self.terms = self.terms, []
        return torch.stack(terms).mean() if terms else torch.zeros(())

    def close(self):
        for h in self.handles:
            h.remove()


def distill_loss(out, teacher, scale):
    return ((out - teacher) ** 2 / scale).mean()


def label_loss(out, labels, label_scale):
    """Cross-entropy for class ids; for targets the MSE / the target's variance over the known
    elements (NaN = unknown: e.g. a count labelled, an incident logit not)."""
    if labels.dtype == torch.int64:
        return torch.nn.functional.cross_entropy(out.reshape(len(out), -1), labels)
    known = ~torch.isnan(labels)
    err = (out.reshape(labels.shape) - torch.nan_to_num(labels)) ** 2 / label_scale
    return (err * known).sum() / known.sum().clamp(min=1)


def label_scale(labels: np.ndarray):
    """Per output element: the variance of its known targets (1 where none or constant)."""
    known = ~np.isnan(labels)
    n = known.sum(axis=0)
    y = np.where(known, labels, 0.0).astype(np.float64)
    mean = y.sum(axis=0) / np.maximum(n, 1)
    v = (np.where(known, y - mean, 0.0) ** 2).sum(axis=0) / np.maximum(n, 1)
    v = np.where((n > 1) & (v > 1e-8), v, 1.0)
    return torch.from_numpy(v.astype(np.float32))


def teacher_scale(teacher: np.ndarray):
    return torch.from_numpy(np.maximum(teacher.var(axis=0), 1e-8).astype(np.float32))


def _frozen_original(module: OnnxModule) -> OnnxModule:
    """A copy of the original model that training does not touch: the teacher for mixed inputs."""
    import copy
    frozen = copy.deepcopy(module)
    frozen.acts = torch.nn.ModuleDict()
    frozen.mode = "original"
    for p in frozen.parameters():
        p.requires_grad_(False)
    return frozen


def _mixed(xt, tt, idx, frozen, gen, labelled: bool):
    """The batch plus MIX_SHARE as many convex mixes of two of its inputs, with the original's
    outputs on them: distillation needs no labels, so it can match the original between the
    owner's inputs too, which keeps the adapted model close to it on inputs it never saw.
    (Labels apply to the batch's own inputs only: they come first.)"""
    n = int(len(idx) * MIX_SHARE)
    if n < 1:
        return xt[idx], tt[idx]
    a = idx[torch.randint(len(idx), (n,), generator=gen)]
    b = idx[torch.randint(len(idx), (n,), generator=gen)]
    lam = torch.rand((n,) + (1,) * (xt.dim() - 1), generator=gen)
    xm = lam * xt[a] + (1 - lam) * xt[b]
    with torch.no_grad():
        tm = frozen(xm)
    return torch.cat([xt[idx], xm]), torch.cat([tt[idx], tm.reshape((n,) + tt.shape[1:])])


def lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to 0 at `steps`: the first steps of
    a freshly substituted network have large, noisy gradients (polynomials far from the kink)."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def held_back_objective(module, xh, th, yh, scale, yscale) -> float:
    """The held-back score: distillation (+ labels) loss of the adapted model on the held-back
    inputs. It picks the epoch kept and decides whether adapt improved on the fits at all."""
    module.mode = "adapted"
    with torch.no_grad():
        out = torch.cat([module(xh[i:i + EVAL_BATCH]) for i in range(0, len(xh), EVAL_BATCH)])
        loss = distill_loss(out.reshape(th.shape), th, scale)
        if yh is not None:
            loss = loss + label_loss(out, yh, yscale)
    return float(loss)


def fine_tune(module: OnnxModule, x: np.ndarray, teacher: np.ndarray, labels: np.ndarray | None,
              cfg: TrainConfig, log=print, held: tuple | None = None) -> list[dict]:
    """held = (inputs, original outputs, labels or None) of the held-back tenth: scored after
    each epoch, and the weights of the best-scoring epoch are the ones kept (cfg.keep_best)."""
    module.mode = "adapted"
    module.train()
    gen = torch.Generator().manual_seed(cfg.seed)
    xt, tt = torch.from_numpy(x), torch.from_numpy(teacher)
    scale = teacher_scale(teacher)
    yt = None if labels is None else torch.from_numpy(labels)
    yscale = None
    if yt is not None and yt.dtype != torch.int64:
        yscale = label_scale(labels)
    opt = torch.optim.Adam(module.parameters(), lr=cfg.lr)
    zeros = _structural_zeros(module) if cfg.keep_zeros else []
    per_epoch = math.ceil(len(x) / cfg.batch)
    steps = max(1, cfg.epochs * per_epoch)
    warmup = min(steps, max(1, round(cfg.warmup * steps)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, warmup))
    probe = _RangeProbe(module)
    frozen = _frozen_original(module)
    if held is not None:
        xh, th = torch.from_numpy(held[0]), torch.from_numpy(held[1])
        yh = None if held[2] is None else torch.from_numpy(held[2])
        best = (held_back_objective(module, xh, th, yh, scale, yscale), 0, _snapshot(module))
    history = []
    try:
        for epoch in range(cfg.epochs):
            t0 = time.perf_counter()
            module.train()
            order = torch.randperm(len(x), generator=gen)
            sums = {"loss": 0.0, "distill": 0.0, "labels": 0.0, "range": 0.0}
            for i in range(0, len(x), cfg.batch):
                idx = order[i:i + cfg.batch]
                xb, tb = _mixed(xt, tt, idx, frozen, gen, yt is not None)
                out = module(xb)
                parts = {"distill": distill_loss(out, tb, scale), "range": probe.take()}
                loss = parts["distill"] + RANGE_WEIGHT * parts["range"]
                if yt is not None:
                    parts["labels"] = label_loss(out[:len(idx)], yt[idx], yscale)
                    loss = loss + parts["labels"]
                opt.zero_grad()
                loss.backward()
                for p, z in zeros:          # Adam moves nothing whose gradient is always 0
                    p.grad.masked_fill_(z, 0.0)
                torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
                opt.step()
                sched.step()
                for act in module.acts.values():
                    act.bound_vertex(cfg.max_vertex)
                parts["loss"] = loss
                for k, v in parts.items():
                    sums[k] += float(v.detach()) * len(idx)
            row = {k: v / len(x) for k, v in sums.items()} | {"epoch": epoch + 1}
            if held is not None:
                row["held_back"] = held_back_objective(module, xh, th, yh, scale, yscale)
                if row["held_back"] < best[0]:
                    best = (row["held_back"], epoch + 1, _snapshot(module))
            row["seconds"] = time.perf_counter() - t0
            history.append(row)
            log(f"epoch {epoch + 1}/{cfg.epochs}  loss {row['loss']:.5f}  (distill {row['distill']:.5f}"
                + (f", labels {row['labels']:.4f}" if yt is not None else "")
                + f", range {row['range']:.2e})"
                + (f"  held back {row['held_back']:.5f}" if held is not None else "")
                + f"  {row['seconds']:.1f} s")
        if held is not None and cfg.keep_best and history:
            module.load_state_dict(best[2])
            for row in history:
                row["kept"] = row["epoch"] == best[1]
            log(f"kept epoch {best[1]} (lowest held-back loss {best[0]:.5f})"
                if best[1] else "no epoch beat the fitted polynomials on the held-back inputs")
    finally:
        probe.close()
        module.eval()
    return history


def _structural_zeros(module: OnnxModule) -> list:
    """(parameter, mask) of the weights that are exactly 0 in the original (a pruned or masked
    connection: e.g. an output the owner built not to read an input): they stay 0."""
    out = []
    for p in module.params.values():
        z = p.detach() == 0
        if z.any() and p.dim() > 1:      # weight matrices/kernels, not biases or BN vectors
            out.append((p, z))
    return out


def _snapshot(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}
