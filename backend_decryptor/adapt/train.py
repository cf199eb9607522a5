"""Fine-tuning: polynomials from the observed ranges, then distillation on the original's outputs.

Loss = MSE(adapted, original) per output element, normalised by the original's variance on the
training inputs (so a count and a logit weigh alike), + the labels' loss when labels are given
(cross-entropy for class ids, normalised MSE for targets), + RANGE_WEIGHT x the mean squared
distance by which activation inputs leave their polynomial's range (in units of the range's
half width): the encrypted evaluation must see the ranges the polynomials were trained on.
Each batch also holds mixes of two of its inputs, distilled on the original's outputs for them
(_mixed). Adam, cosine learning-rate decay, gradient norm clipped at 1.
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


@dataclass
class TrainConfig:
    degree: int = 2
    epochs: int = 30
    seed: int = 0
    lr: float = 1e-3          # run.DEFAULT_LR is what adapt passes
    batch: int = 64


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


def build_polynomials(module: OnnxModule, x_train: np.ndarray, degree: int, seed: int = 0) -> None:
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
    if labels.dtype == torch.int64:
        return torch.nn.functional.cross_entropy(out.reshape(len(out), -1), labels)
    return ((out.reshape(labels.shape) - labels) ** 2 / label_scale).mean()


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


def fine_tune(module: OnnxModule, x: np.ndarray, teacher: np.ndarray, labels: np.ndarray | None,
              cfg: TrainConfig, log=print) -> list[dict]:
    module.mode = "adapted"
    module.train()
    gen = torch.Generator().manual_seed(cfg.seed)
    xt, tt = torch.from_numpy(x), torch.from_numpy(teacher)
    scale = teacher_scale(teacher)
    yt = None if labels is None else torch.from_numpy(labels)
    yscale = None
    if yt is not None and yt.dtype != torch.int64:
        yscale = torch.from_numpy(np.maximum(labels.var(axis=0), 1e-8).astype(np.float32))
    opt = torch.optim.Adam(module.parameters(), lr=cfg.lr)
    steps = max(1, cfg.epochs * math.ceil(len(x) / cfg.batch))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    probe = _RangeProbe(module)
    frozen = _frozen_original(module)
    history = []
    try:
        for epoch in range(cfg.epochs):
            t0 = time.perf_counter()
            order = torch.randperm(len(x), generator=gen)
            sums = {"loss": 0.0, "distill": 0.0, "labels": 0.0, "range": 0.0}
            for i in range(0, len(x), cfg.batch):
                idx = order[i:i + cfg.batch]
                xb, tb = _mixed(xt, tt, idx, frozen, gen, yt is not None)
                out = module(xb)
                parts = {"distill": distill_loss(out, tb, scale), "range": probe.take()}
                if yt is not None:
                    parts["labels"] = label_loss(out[:len(idx)], yt[idx], yscale)
                loss = parts["distill"] + RANGE_WEIGHT * parts["range"] + parts.get("labels", 0.0)
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
                opt.step()
                sched.step()
                parts["loss"] = loss
                for k, v in parts.items():
                    sums[k] += float(v.detach()) * len(idx)
            row = {k: v / len(x) for k, v in sums.items()} | {"epoch": epoch + 1,
                                                               "seconds": time.perf_counter() - t0}
            history.append(row)
            log(f"epoch {epoch + 1}/{cfg.epochs}  loss {row['loss']:.5f}  (distill {row['distill']:.5f}"
                + (f", labels {row['labels']:.4f}" if yt is not None else "")
                + f", range {row['range']:.2e})  {row['seconds']:.1f} s")
    finally:
        probe.close()
        module.eval()
    return history
