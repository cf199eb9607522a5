"""The trainable polynomial that replaces one activation: one polynomial per channel (axis 1).

Each channel c has a range [lo_c, hi_c]: the range its inputs took on the owner's data through
the original model, widened by protect's own margin (activations.fit_range). The polynomial is
kept in the normalised variable t = (x - mid_c) / half_c, so t is in [-1, 1] on that range and
the coefficients are well conditioned for training; it starts as a least-squares fit of the
original function (initial_fit: weighted towards the observed inputs, the rest on the range). `excess` measures
how far inputs leave the range: the range penalty that keeps the encrypted evaluation inside
what training saw.
"""
from __future__ import annotations

import numpy as np

from backend_decryptor.adapt import AdaptError, require_torch
from protected_nn.frontend.ops.activations import fit_polynomial, fit_range

torch = require_torch()


def activation_function(op: str, attrs: dict, clip_bounds=(None, None)):
    """numpy f(x) of an ONNX activation (what the initial fit approximates)."""
    if op == "Relu":
        return lambda x: np.maximum(x, 0.0)
    if op == "LeakyRelu":
        alpha = float(attrs.get("alpha", 0.01))
        return lambda x: np.where(x >= 0.0, x, alpha * x)
    if op == "Sigmoid":
        return lambda x: 0.5 * (1.0 + np.tanh(0.5 * x))
    if op == "Tanh":
        return np.tanh
    if op == "Softplus":
        return lambda x: np.logaddexp(0.0, x)
    if op == "Clip":
        lo, hi = clip_bounds
        return lambda x: np.clip(x, -np.inf if lo is None else lo, np.inf if hi is None else hi)
    raise AdaptError(f"no polynomial for activation {op}")  # pragma: no cover - ACTIVATIONS


DATA_WEIGHT = 0.8       # share of the initial fit's weight on the observed inputs (rest: the range)


def initial_fit(f, mid: float, half: float, degree: int, samples: np.ndarray | None) -> np.ndarray:
    """Coefficients in t = (x - mid)/half: protect's least-squares fit on Chebyshev nodes of the
    range, and, given the observed inputs, a weighted least-squares fit that puts DATA_WEIGHT on
    where the inputs actually are (most of a ReLU's inputs sit near its kink: a fit uniform over
    the range starts far from the network's function) and the rest on the whole range."""
    g = lambda t: f(mid + half * t)  # noqa: E731
    if samples is None or len(samples) <= degree + 1:
        return fit_polynomial(g, -1.0, 1.0, degree)[0]
    n = max(64, 8 * (degree + 1))
    nodes = np.cos(np.pi * (np.arange(n) + 0.5) / n)
    t = np.concatenate([(np.asarray(samples, float) - mid) / half, nodes])
    w = np.concatenate([np.full(len(samples), DATA_WEIGHT / len(samples)), np.full(n, (1 - DATA_WEIGHT) / n)])
    return np.polynomial.polynomial.polyfit(t, g(t), degree, w=np.sqrt(w))


class PolyActivation(torch.nn.Module):
    """y = sum_k w[c, k] t^k with t = (x - mid[c]) / half[c], channel c on axis 1."""

    def __init__(self, name: str, op: str, f, lo: np.ndarray, hi: np.ndarray, degree: int,
                 samples: list[np.ndarray] | None = None):
        super().__init__()
        self.name, self.op, self.degree = name, op, int(degree)
        ranges = [fit_range(float(a), float(b)) for a, b in zip(lo, hi)]
        mid = np.array([(a + b) / 2 for a, b in ranges])
        half = np.array([(b - a) / 2 for a, b in ranges])
        coeffs = [initial_fit(f, m, h, self.degree, None if samples is None else samples[c])
                  for c, (m, h) in enumerate(zip(mid, half))]
        self.register_buffer("center", torch.tensor(mid, dtype=torch.float32))
        self.register_buffer("radius", torch.tensor(half, dtype=torch.float32))
        self.weight = torch.nn.Parameter(torch.tensor(np.array(coeffs), dtype=torch.float32))

    def _per_channel(self, v, x):
        shape = [1] * x.dim()
        if x.dim() > 1:
            shape[1] = -1
        return v.reshape(shape)

    def normalised(self, x):
        return (x - self._per_channel(self.center, x)) / self._per_channel(self.radius, x)

    def forward(self, x):
        t = self.normalised(x)
        w = self.weight
        y = self._per_channel(w[:, self.degree], x)
        for k in range(self.degree - 1, -1, -1):          # Horner
            y = y * t + self._per_channel(w[:, k], x)
        return y

    def bound_vertex(self, max_vertex: float) -> None:
        """Degree 2: keep each channel's vertex within max_vertex half-widths of its centre, by
        raising |w2| where it is too small (|w1| <= 2 max_vertex |w2| in t). Exported as
        w2 (x + s)^2 + c, a vertex far away means a large encrypted square that the constant c
        cancels only after it has overflowed the result's prime; kept within bounds in training,
        the network learns around the extra curvature and the export is exact."""
        if self.degree != 2 or not np.isfinite(max_vertex):
            return
        with torch.no_grad():
            w1, w2 = self.weight[:, 1], self.weight[:, 2]
            need = w1.abs() / (2 * max_vertex)
            far = w2.abs() < need
            sign = torch.where(w2 < 0, -1.0, 1.0)
            self.weight[:, 2] = torch.where(far, sign * need, w2)

    @staticmethod
    def excess(t):
        """Mean squared distance of normalised inputs outside [-1, 1] (0 inside)."""
        return torch.relu(t.abs() - 1.0).square().mean()

    def fit_ranges(self) -> list[list[float]]:
        m, h = self.center.numpy().astype(float), self.radius.numpy().astype(float)
        return [[round(a - b, 6), round(a + b, 6)] for a, b in zip(m, h)]

    def power_coefficients(self) -> np.ndarray:
        """(channels, degree+1) coefficients in x - mid (low degree first), float64."""
        w = self.weight.detach().numpy().astype(np.float64)
        h = self.radius.numpy().astype(np.float64)
        return w / h[:, None] ** np.arange(self.degree + 1)[None, :]


def channel_ranges(values, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (axis 1) min and max of a batch of activation inputs (torch tensor)."""
    v = values.detach()
    if v.dim() == 1:
        v = v[:, None]
    v = v.transpose(0, 1).reshape(v.shape[1], -1)
    if v.shape[0] != channels:  # pragma: no cover - shapes come from the same tensor
        raise AdaptError("activation channel count changed")
    return v.min(dim=1).values.numpy(), v.max(dim=1).values.numpy()
