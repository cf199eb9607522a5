"""Non-polynomial activations (Relu, Sigmoid, Tanh, Softplus, LeakyRelu) -> ir.Poly.

CKKS evaluates only additions and products, so each activation is replaced by a polynomial of
degree `ctx.poly_degree` fitted by least squares on Chebyshev nodes over the range its input
takes on the calibration inputs, widened by a margin (inputs seen at inference drift a little).
Outside that range the polynomial diverges quickly: calibration inputs must be representative.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx

from protected_nn import ir
from protected_nn.errors import UnsupportedOpError
from protected_nn.frontend.context import LoweringContext, attributes, ir_shape

RANGE_MARGIN = 0.10        # widen the calibrated range by 10 % of its width on each side
MIN_HALF_WIDTH = 1e-3      # a constant activation input still gets a non-degenerate interval
_ERROR_GRID = 4001         # points on which fit_max_error is measured


def _functions(node: onnx.NodeProto) -> Callable[[np.ndarray], np.ndarray]:
    op = node.op_type
    if op == "Relu":
        return lambda x: np.maximum(x, 0.0)
    if op == "Sigmoid":
        return lambda x: 0.5 * (1.0 + np.tanh(0.5 * x))       # overflow-free logistic
    if op == "Tanh":
        return np.tanh
    if op == "Softplus":
        return lambda x: np.logaddexp(0.0, x)
    if op == "LeakyRelu":
        alpha = float(attributes(node).get("alpha", 0.01))
        return lambda x: np.where(x >= 0.0, x, alpha * x)
    raise UnsupportedOpError(f"no polynomial approximation for {op}")  # pragma: no cover


def fit_range(lo: float, hi: float) -> tuple[float, float]:
    """The calibrated [lo, hi] widened by the margin (never empty)."""
    width = hi - lo
    lo, hi = lo - RANGE_MARGIN * width, hi + RANGE_MARGIN * width
    half = max(MIN_HALF_WIDTH * max(1.0, abs(lo), abs(hi)), 0.0)
    if hi - lo < 2 * half:
        mid = 0.5 * (lo + hi)
        lo, hi = mid - half, mid + half
    return float(lo), float(hi)


def fit_polynomial(f: Callable[[np.ndarray], np.ndarray], lo: float, hi: float,
                   degree: int) -> tuple[np.ndarray, float]:
    """Least-squares fit of f on Chebyshev nodes of [lo, hi]; returns power-basis coefficients
    (low -> high degree, in x itself) and the max |poly - f| measured on a dense grid."""
    n = max(64, 8 * (degree + 1))
    nodes = 0.5 * (lo + hi) + 0.5 * (hi - lo) * np.cos(np.pi * (np.arange(n) + 0.5) / n)
    cheb = np.polynomial.Chebyshev.fit(nodes, f(nodes), degree, domain=[lo, hi])
    coeffs = cheb.convert(kind=np.polynomial.Polynomial).coef
    coeffs = np.pad(coeffs, (0, degree + 1 - coeffs.size))
    grid = np.linspace(lo, hi, _ERROR_GRID)
    err = float(np.max(np.abs(np.polynomial.polynomial.polyval(grid, coeffs) - f(grid))))
    return coeffs, err


def lower_activation(node: onnx.NodeProto, ctx: LoweringContext) -> None:
    x = ctx.tensor(node.input[0], node)
    f = _functions(node)
    lo, hi = fit_range(*ctx.range_of(node.input[0]))
    coeffs, err = fit_polynomial(f, lo, hi, ctx.poly_degree)
    layer = ir.Poly(name=ctx.fresh_name(node.output[0]), inputs=[x.layer], shape=ir_shape(x.shape),
                    sources=[node.name], coeffs=coeffs, op=node.op_type,
                    fit_range=(lo, hi), fit_max_error=err)
    ctx.emit(layer, node.output[0], x.shape, node)
