"""The HE-friendly crowd-and-incident CNN (PyTorch; needs the `[train]` extra).

    (1,2,H,W) -> [Conv (+BN) -> x*x -> AvgPool] per entry of `convs` -> Flatten = f
    count    = density(f) summed over the cells          (a linear map of f)
    incident = Gemm(x*x of (Gemm(f) + BN)) + Gemm(f)     (hidden path + linear part)
    exported as one path: Gemm -> x*x -> Gemm (see LINEAR_PAIR_C) -> [crowd_count, incident_logit]

`Arch` names the shape: input size (H, W), one (out channels, kernel, stride, pool) per
convolution, the hidden width, and how many channels of each convolution are "gray-only".

Why this shape:
- Under CKKS every activation must fit the slots of one ciphertext, each layer costs a level,
  and only x*x is used as activation: it is exact under encryption (no polynomial approximation
  error). BatchNorms keep the squares trainable and fold into the preceding Conv/Gemm at export.
- The count comes from the frame alone, by construction: the first `gray` output channels of
  each convolution read only the gray channel (their motion weights are held at zero) or the
  previous gray-only channels, and the count reads only those. So the motion channel - which
  depends on frame timing - cannot move the count at all; motion only feeds the incident logit.
- The count is a density map summed: each pooled cell contributes a linear function of its
  (squared) local features, trained against the number of annotated heads in that cell. A
  count assembled from local evidence extrapolates to denser scenes; a global regressor over
  ~600 frames of one camera memorises them instead.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn


# The linear parts (count, linear incident term) travel through the graph's square as a
# difference of two squares: ((L + c) / 2 sqrt(c))^2 - ((L - c) / 2 sqrt(c))^2 = L exactly, so the
# ONNX graph keeps one path (Conv, x*x, pool, Gemm, x*x, Gemm: no join of two encrypted branches,
# which costs the engine a second readout of the features). c near the typical |L| keeps both
# squares about as large as L itself (CKKS noise grows with the magnitudes inside).
LINEAR_PAIR_C = {"count": 30.0, "incident": 4.0}


@dataclass(frozen=True)
class Arch:
    size: tuple[int, int] = (32, 32)                                   # input (H, W)
    convs: tuple[tuple[int, int, int, int], ...] = ((8, 5, 2, 2),)     # (out ch, kernel, stride, pool)
    hidden: int = 28                    # + 4 units carrying the linear parts (LINEAR_PAIR_C)
    gray: tuple[int, ...] = (6,)        # gray-only channels of each conv (the count reads these)

    def __post_init__(self):
        if len(self.gray) != len(self.convs) or any(not 0 < g <= c[0] for g, c in zip(self.gray, self.convs)):
            raise ValueError(f"gray {self.gray}: need one count in 1..channels per conv {self.convs}")

    def conv_shapes(self) -> list[tuple[int, int, int]]:
        """(C, H, W) after each conv block (conv with k//2 padding, stride, then pool)."""
        (h, w), out = self.size, []
        for c, k, s, p in self.convs:
            h, w = (h + 2 * (k // 2) - k) // s + 1, (w + 2 * (k // 2) - k) // s + 1
            h, w = h // p, w // p
            out.append((c, h, w))
        return out

    def cells(self) -> tuple[int, int]:
        return self.conv_shapes()[-1][1:]

    def flat(self) -> int:
        c, h, w = self.conv_shapes()[-1]
        return c * h * w

    def to_dict(self) -> dict:
        d = asdict(self)
        return {"size": list(d["size"]), "convs": [list(c) for c in d["convs"]], "hidden": d["hidden"],
                "gray": list(d["gray"])}

    @staticmethod
    def from_dict(d: dict) -> "Arch":
        return Arch(tuple(d["size"]), tuple(tuple(c) for c in d["convs"]), int(d["hidden"]), tuple(d["gray"]))


ARCHS = {   # the named shapes `make train SIZE=...` picks from
    "32": Arch(),       # what the engine on main runs within budget: one conv, 2x32x32 input
    # 16 channels of which 8 read motion: fits one ciphertext (16x16x16 = 4096 after the conv)
    "32w": Arch((32, 32), ((16, 5, 2, 2),), 28, (8,)),
    # 64x64, two convolutions: the first at stride 4 (8x16x16), the second 1x1 + pool (a 3x3
    # one there costs the engine on main about twice as much); the depth (7) needs a 16384 ring
    "64s": Arch((64, 64), ((8, 5, 4, 1), (8, 1, 1, 2)), 28, (4, 6)),
    "64": Arch((64, 64), ((8, 5, 2, 1), (16, 3, 2, 1), (32, 3, 2, 2)), 28, (6, 12, 24)),
}


class CrowdIncidentNet(nn.Module):
    def __init__(self, arch: Arch = Arch()):
        super().__init__()
        self.arch = arch
        cin, gin, convs, bns, pools, masks = 2, 1, [], [], [], []
        for (c, k, s, p), g in zip(arch.convs, arch.gray):
            convs.append(nn.Conv2d(cin, c, k, stride=s, padding=k // 2))
            bns.append(nn.BatchNorm2d(c))
            pools.append(nn.AvgPool2d(p) if p > 1 else nn.Identity())
            mask = torch.ones(c, cin, 1, 1)
            mask[:g, gin:] = 0.0            # gray-only outputs never see motion(-derived) inputs
            masks.append(mask)
            cin, gin = c, g
        self.convs, self.bns, self.pools = nn.ModuleList(convs), nn.ModuleList(bns), nn.ModuleList(pools)
        for i, m in enumerate(masks):
            self.register_buffer(f"mask{i}", m)
        c, h, w = arch.conv_shapes()[-1]
        self.density_w = nn.Parameter(torch.zeros(arch.gray[-1], h, w))
        self.density_b = nn.Parameter(torch.zeros(h, w))
        self.fc1 = nn.Linear(arch.flat(), arch.hidden)
        self.bn_fc = nn.BatchNorm1d(arch.hidden)
        self.fc2 = nn.Linear(arch.hidden, 1)
        self.inc_lin = nn.Linear(arch.flat(), 1)
        # count = L + curve * L^2 / LINEAR_PAIR_C["count"], L = the density map summed: dense crowds
        # occlude each other, so local evidence grows slower than the count (free in the graph: see
        # folded_weights)
        self.count_curve = nn.Parameter(torch.zeros(()))
        with torch.no_grad():           # small last layers: the logit starts near 0
            self.fc2.weight.mul_(0.1)
            self.fc2.bias.zero_()
            self.inc_lin.weight.mul_(0.1)

    def conv_weight(self, i: int) -> torch.Tensor:
        return self.convs[i].weight * getattr(self, f"mask{i}")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for i, (conv, bn, pool) in enumerate(zip(self.convs, self.bns, self.pools)):
            h = bn(nn.functional.conv2d(h, self.conv_weight(i), conv.bias, conv.stride, conv.padding))
            h = pool(h * h)
        return h

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (output (N, 2) = [count, incident logit], density (N, h, w) people per cell)."""
        f = self.features(x)
        density = (f[:, :self.arch.gray[-1]] * self.density_w).sum(1) + self.density_b
        flat = torch.flatten(f, 1)
        z = self.bn_fc(self.fc1(flat))
        logit = self.fc2(z * z)[:, 0] + self.inc_lin(flat)[:, 0]
        total = density.flatten(1).sum(1)
        count = total + self.count_curve * total * total / LINEAR_PAIR_C["count"]
        return torch.stack([count, logit], 1), density

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_all(x)[0]




def _pair_rows(w_row, b, c, q=0.0):
    """Rows/biases of two hidden units u, v and their fc2 weights a, -b with a u^2 - b v^2 =
    L + q L^2 / c - q c (the constant is returned last, for fc2's bias)."""
    k = 1.0 / (2.0 * float(np.sqrt(c)))
    # a + b = 2 gives the linear term L; (a - b) / (4c) = q / c gives the square; the constant
    # (a - b) c / 4 = q c is left over
    a, bb = 1.0 + 2.0 * q, 1.0 - 2.0 * q
    return [w_row * k, w_row * k], [(b + c) * k, (b - c) * k], [a, -bb], q * c


def folded_weights(net: CrowdIncidentNet) -> dict[str, np.ndarray]:
    """Eval-mode weights of the ONNX graph (float32 numpy), every BatchNorm folded in:
    conv{i}_w/conv{i}_b per convolution; fc1 = the hidden units, then two units per linear part
    (count, linear incident term); fc2 = [count, logit] from their squares."""
    def fold(w, b, bn):
        s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        shape = (-1,) + (1,) * (w.dim() - 1)
        return w * s.reshape(shape), (b - bn.running_mean) * s + bn.bias

    arch, out = net.arch, {}
    with torch.no_grad():
        for i, (conv, bn) in enumerate(zip(net.convs, net.bns)):
            out[f"conv{i}_w"], out[f"conv{i}_b"] = fold(net.conv_weight(i), conv.bias, bn)
        f1w, f1b = fold(net.fc1.weight, net.fc1.bias, net.bn_fc)
        c, h, w = arch.conv_shapes()[-1]
        count_row = torch.zeros(c, h, w, dtype=torch.float64)
        count_row[:arch.gray[-1]] = net.density_w.double()
        rows, biases = [f1w.double()], [f1b.double()]
        fc2_w = torch.zeros(2, arch.hidden + 4, dtype=torch.float64)
        fc2_w[1, :arch.hidden] = net.fc2.weight[0].double()
        consts = []
        for j, (row, b, cc, q) in enumerate([(count_row.flatten(), net.density_b.double().sum(), LINEAR_PAIR_C["count"],
                                              float(net.count_curve)),
                                             (net.inc_lin.weight[0].double(), net.inc_lin.bias[0].double(),
                                              LINEAR_PAIR_C["incident"], 0.0)]):
            r, bb, sign, const = _pair_rows(row, b, cc, q)
            consts.append(const)
            rows += [r[0][None], r[1][None]]
            biases += [bb[0].reshape(1), bb[1].reshape(1)]
            fc2_w[j, arch.hidden + 2 * j:arch.hidden + 2 * j + 2] = torch.tensor(sign, dtype=torch.float64)
        out["fc1_w"], out["fc1_b"] = torch.cat(rows), torch.cat(biases)
        out["fc2_w"] = fc2_w
        out["fc2_b"] = torch.tensor([-consts[0], float(net.fc2.bias[0]) - consts[1]], dtype=torch.float64)
    return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in out.items()}
