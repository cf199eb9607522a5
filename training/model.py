"""The HE-friendly crowd-and-incident CNN (PyTorch; needs the `[train]` extra).

    (1,2,32,32) -> Conv 2->4 5x5 s2 p2 (+BN) -> x*x -> AvgPool 2 -> Flatten (256)
                -> Gemm 256->32 (+BN) -> x*x -> Gemm 32->2 -> [crowd_count, incident_logit]

Why this shape: under CKKS every layer's activation must fit one ciphertext (4096 slots; the
largest here is 4x16x16 = 1024), the multiplicative depth stays at conv, square, linear (the
average pool folds into the next Gemm), square, linear, and only x*x is used as activation,
since it is exact under encryption (no polynomial approximation error). The BatchNorms make the
squares trainable (pre-activations stay near unit variance instead of blowing up) and fold into
the preceding conv/Gemm at export, so the ONNX graph holds Conv, Mul, AveragePool, Flatten, Gemm.
"""
from __future__ import annotations

import torch
from torch import nn

COUNT_SCALE = 10.0          # the count head learns count/10; folded into the last Gemm at export


class CrowdIncidentNet(nn.Module):
    def __init__(self, channels: int = 4, hidden: int = 32, size: int = 32):
        super().__init__()
        self.channels, self.hidden, self.size = channels, hidden, size
        self.conv = nn.Conv2d(2, channels, 5, stride=2, padding=2)
        self.bn1 = nn.BatchNorm2d(channels)
        self.pool = nn.AvgPool2d(2)
        self.fc1 = nn.Linear(channels * (size // 4) ** 2, hidden)
        self.bn2 = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, 2)
        self.register_buffer("out_scale", torch.tensor([COUNT_SCALE, 1.0]))
        with torch.no_grad():           # small last layer: squared features start near unit size
            self.fc2.weight.mul_(0.1)
            self.fc2.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn1(self.conv(x))
        h = self.pool(h * h)
        h = self.bn2(self.fc1(torch.flatten(h, 1)))
        return self.fc2(h * h) * self.out_scale


def folded_weights(net: CrowdIncidentNet) -> dict[str, "np.ndarray"]:
    """Eval-mode weights with both BatchNorms and the output scale folded in (float32 numpy)."""
    import numpy as np

    def fold(w, b, bn):
        s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        shape = (-1,) + (1,) * (w.dim() - 1)
        return w * s.reshape(shape), (b - bn.running_mean) * s + bn.bias

    with torch.no_grad():
        cw, cb = fold(net.conv.weight, net.conv.bias, net.bn1)
        f1w, f1b = fold(net.fc1.weight, net.fc1.bias, net.bn2)
        f2w = net.fc2.weight * net.out_scale[:, None]
        f2b = net.fc2.bias * net.out_scale
    return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in
            dict(conv_w=cw, conv_b=cb, fc1_w=f1w, fc1_b=f1b, fc2_w=f2w, fc2_b=f2b).items()}
