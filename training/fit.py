"""The training loop: count and density on real frames, incidents on rendered scenes plus real
frames as negatives (PyTorch, CPU, seeded).

Per step one batch draws from each group:
- `real` (the Mall frames): count loss on the summed density, a per-cell density loss against
  the annotated heads, cell-aligned cut-mix (a box of cells taken from another frame, with its
  heads: the count of a composite is exact, and mixing makes denser and sparser frames than the
  640 seen), exposure jitter; incident target 0 (calm crowds), with the motion channel zero or
  against the frame before (0.5 s: more motion than the 0.1 s the model gets at run time, so
  walking crowds are negatives even at their most lively).
- `labelled` (other real footage with labels.csv): count and incident loss.
- `synthetic` (rendered scenes): incident loss only (the rendered camera is not the real one;
  their counts would pull the density map of the real camera).
The count reads only gray-only channels (model.py), so no motion augmentation is needed for it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from training.dataset import LabelledSet
from training.model import Arch, CrowdIncidentNet

COUNT_SCALE = 10.0      # count loss on count/10 (smooth-L1 with beta 0.1 person-tenths)


@dataclass
class RealSet:
    gray: np.ndarray         # (N, H, W) float32
    prev: np.ndarray         # (N, H, W) float32: the frame before (== gray for a clip's first frame)
    count: np.ndarray        # (N,)
    density: np.ndarray      # (N, h, w) heads per cell


@dataclass
class Weights:
    density: float = 1.0     # per-cell squared error (people per cell)
    incident: float = 0.5
    # incident frames are 1 in 5 of the rendered set and the real negatives add more calm frames:
    # weigh positives up so that recall at logit > 0 holds, the calm real frames keep it honest
    incident_pos_weight: float = 3.0
    # per scenario kind, overriding incident_pos_weight for that kind's incident frames (a fall
    # is one small person going down: fewer, fainter positives than a whole crowd running apart)
    pos_weight_by_kind: dict = field(default_factory=lambda: {"fall": 6.0})
    mix: float = 0.5         # share of real samples that get a cut-mix box
    real_per_batch: int = 32
    synthetic_per_batch: int = 64


def positive_weights(kinds: np.ndarray, weights: Weights) -> torch.Tensor:
    """Per sample: the weight its frame gets if it is an incident frame (by scenario kind)."""
    return torch.tensor([weights.pos_weight_by_kind.get(str(k), weights.incident_pos_weight) for k in kinds],
                        dtype=torch.float32)


def weighted_bce(logit: torch.Tensor, target: torch.Tensor, pos_w: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with each positive weighted by pos_w (negatives by 1): the same as
    BCEWithLogitsLoss(pos_weight=w) when every pos_w is w."""
    w = torch.where(target > 0.5, pos_w, torch.ones_like(target))
    return (w * nn.functional.binary_cross_entropy_with_logits(logit, target, reduction="none")).mean()


def _cutmix(gray, prev, dens, gen, share, cell):
    n, hc, wc = dens.shape
    other = torch.randint(0, n, (n,), generator=gen)
    pick = torch.rand(n, generator=gen) < share
    for j in torch.nonzero(pick)[:, 0].tolist():
        y0, y1 = sorted(torch.randint(0, hc + 1, (2,), generator=gen).tolist())
        x0, x1 = sorted(torch.randint(0, wc + 1, (2,), generator=gen).tolist())
        o = int(other[j])
        ys, xs = slice(y0 * cell[0], y1 * cell[0]), slice(x0 * cell[1], x1 * cell[1])
        gray[j, ys, xs], prev[j, ys, xs] = gray[o, ys, xs], prev[o, ys, xs]
        dens[j, y0:y1, x0:x1] = dens[o, y0:y1, x0:x1]
    return gray, prev, dens


def _jitter(x, gen):
    """Exposure/contrast: a gain on both channels (motion scales with it), an offset on gray."""
    gain = 0.75 + 0.5 * torch.rand(len(x), 1, 1, 1, generator=gen)
    offset = torch.zeros(len(x), 2, 1, 1)
    offset[:, 0] = 0.2 * (torch.rand(len(x), 1, 1, generator=gen) - 0.5)
    return (x * gain + offset).clamp(0.0, 1.0)


def train(arch: Arch, real: RealSet | None, synthetic: LabelledSet | None = None,
          labelled: LabelledSet | None = None, *, epochs: int = 30, lr: float = 3e-3, seed: int = 0,
          weights: Weights = Weights(), log=print, net_cls=CrowdIncidentNet) -> CrowdIncidentNet:
    """`net_cls`: a CrowdIncidentNet subclass to train the same way (bench/adapt_models.py's ReLU
    version of the shipped model)."""
    if real is None and labelled is None:
        raise ValueError("nothing to learn the count from: no real frames")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = net_cls(arch)
    cells = arch.cells()
    cell = (arch.size[0] // cells[0], arch.size[1] // cells[1])
    bce = nn.BCEWithLogitsLoss()
    groups = {}
    if real is not None:
        groups["real"] = (len(real.count), weights.real_per_batch)
        r_gray, r_prev = torch.from_numpy(real.gray), torch.from_numpy(real.prev)
        r_dens = torch.from_numpy(real.density)
    if synthetic is not None and len(synthetic):
        groups["synthetic"] = (len(synthetic), weights.synthetic_per_batch)
        s_x, s_inc = torch.from_numpy(synthetic.x), torch.from_numpy(synthetic.incident)
        s_pw = positive_weights(synthetic.kind, weights)
    if labelled is not None and len(labelled):
        groups["labelled"] = (len(labelled), weights.real_per_batch)
        l_x, l_cnt, l_inc = (torch.from_numpy(a) for a in (labelled.x, labelled.count, labelled.incident))
        l_pw = positive_weights(labelled.kind, weights)
    # an epoch: one pass over the largest group (the synthetic set, when there is one)
    per_epoch = max((n + b - 1) // b for n, b in groups.values())
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * per_epoch, pct_start=0.15)
    for epoch in range(epochs):
        net.train()
        tot = 0.0
        for _ in range(per_epoch):
            xs, parts = [], []
            if "real" in groups:
                idx = torch.randint(0, len(r_gray), (weights.real_per_batch,), generator=gen)
                g, p, d = _cutmix(r_gray[idx].clone(), r_prev[idx].clone(), r_dens[idx].clone(), gen,
                                  weights.mix, cell)
                use_motion = (torch.rand(len(idx), 1, 1, generator=gen) < 0.5).float()
                x = torch.stack([g, (g - p).abs() * use_motion], 1)
                xs.append(_jitter(x, gen))
                parts.append(("real", len(idx), d))
            if "synthetic" in groups:
                idx = torch.randint(0, len(s_x), (weights.synthetic_per_batch,), generator=gen)
                x = s_x[idx]
                flip = torch.rand(len(idx), generator=gen) < 0.5      # mirror: same incident
                xs.append(_jitter(torch.where(flip[:, None, None, None], x.flip(-1), x), gen))
                parts.append(("synthetic", len(idx), (s_inc[idx], s_pw[idx])))
            if "labelled" in groups:
                idx = torch.randint(0, len(l_x), (weights.real_per_batch,), generator=gen)
                xs.append(_jitter(l_x[idx], gen))
                parts.append(("labelled", len(idx), (l_cnt[idx], l_inc[idx], l_pw[idx])))
            out, dens = net.forward_all(torch.cat(xs))
            loss, at = 0.0, 0
            for name, n, target in parts:
                o, dn = out[at:at + n], dens[at:at + n]
                at += n
                if name == "real":
                    loss = loss + nn.functional.smooth_l1_loss(o[:, 0] / COUNT_SCALE, target.flatten(1).sum(1) / COUNT_SCALE,
                                                               beta=0.1) \
                        + weights.density * ((dn - target) ** 2).mean() \
                        + weights.incident * bce(o[:, 1], torch.zeros(n))
                elif name == "synthetic":
                    loss = loss + weights.incident * weighted_bce(o[:, 1], *target)
                else:
                    loss = loss + nn.functional.smooth_l1_loss(o[:, 0] / COUNT_SCALE, target[0] / COUNT_SCALE, beta=0.1) \
                        + weights.incident * weighted_bce(o[:, 1], target[1], target[2])
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 1.0)    # squares can spike: keep steps bounded
            opt.step()
            sched.step()
            tot += float(loss.detach())
        if epoch % max(1, epochs // 10) == 0 or epoch == epochs - 1:
            log(f"epoch {epoch + 1}/{epochs} loss {tot / per_epoch:.4f}")
    net.eval()
    return net
