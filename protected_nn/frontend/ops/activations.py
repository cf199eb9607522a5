"""Non-polynomial activations (Relu, Clip, Sigmoid, Tanh, Softplus, LeakyRelu, Elu, Selu,
HardSigmoid, HardSwish, Softsign, Mish, Gelu) -> ir.Poly.

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


_SELU_ALPHA, _SELU_GAMMA = 1.67326319217681884765625, 1.05070102214813232421875


def _hard_sigmoid(alpha: float, beta: float):
    return lambda x: np.clip(alpha * x + beta, 0.0, 1.0)


def _functions(node: onnx.NodeProto) -> Callable[[np.ndarray], np.ndarray]:
    """The activation as a numpy function (Clip is handled by `lower_clip`)."""
    op, a = node.op_type, attributes(node)
    if op == "Relu":
        return lambda x: np.maximum(x, 0.0)
    if op == "Sigmoid":
        return lambda x: 0.5 * (1.0 + np.tanh(0.5 * x))       # overflow-free logistic
    if op == "Tanh":
        return np.tanh
    if op == "Softplus":
        return lambda x: np.logaddexp(0.0, x)
    if op == "LeakyRelu":
        alpha = float(a.get("alpha", 0.01))
        return lambda x: np.where(x >= 0.0, x, alpha * x)
    if op == "Elu":
        alpha = float(a.get("alpha", 1.0))
        return lambda x: np.where(x >= 0.0, x, alpha * np.expm1(np.minimum(x, 0.0)))
    if op == "Selu":
        alpha, gamma = float(a.get("alpha", _SELU_ALPHA)), float(a.get("gamma", _SELU_GAMMA))
        return lambda x: gamma * np.where(x > 0.0, x, alpha * np.expm1(np.minimum(x, 0.0)))
    if op == "HardSigmoid":
        return _hard_sigmoid(float(a.get("alpha", 0.2)), float(a.get("beta", 0.5)))
    if op == "HardSwish":
        hs = _hard_sigmoid(1.0 / 6.0, 0.5)
        return lambda x: x * hs(x)
    if op == "Softsign":
        return lambda x: x / (1.0 + np.abs(x))
    if op == "Mish":
        return lambda x: x * np.tanh(np.logaddexp(0.0, x))
    if op == "Gelu":
        approx = a.get("approximate", b"none")
        approx = approx.decode() if isinstance(approx, bytes) else str(approx)
        if approx == "tanh":
            return lambda x: 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))
        if approx != "none":
            raise UnsupportedOpError(f"Gelu node '{node.name}': attribute approximate={approx!r} "
                                     f"is not supported (none or tanh)")
        from scipy.special import erf
        return lambda x: 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))
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


def _emit_fit(node: onnx.NodeProto, ctx: LoweringContext, f, op: str) -> None:
    x = ctx.tensor(node.input[0], node)
    lo, hi = fit_range(*ctx.range_of(node.input[0]))
    coeffs, err = fit_polynomial(f, lo, hi, ctx.poly_degree)
    layer = ir.Poly(name=ctx.fresh_name(node.output[0]), inputs=[x.layer], shape=ir_shape(x.shape),
                    sources=[node.name], coeffs=coeffs, op=op,
                    fit_range=(lo, hi), fit_max_error=err)
    ctx.emit(layer, node.output[0], x.shape, node)


def lower_activation(node: onnx.NodeProto, ctx: LoweringContext) -> None:
    _emit_fit(node, ctx, _functions(node), node.op_type)


def _bound(node, ctx: LoweringContext, index: int, what: str) -> float | None:
    if len(node.input) <= index or not node.input[index]:
        return None
    v = np.asarray(ctx.const(node.input[index], node, what), dtype=np.float64).reshape(-1)
    if v.size != 1:
        raise UnsupportedOpError(f"Clip node '{node.name}': input {what} must be one value "
                                 f"(got {v.size})")
    return float(v[0])


def lower_clip(node: onnx.NodeProto, ctx: LoweringContext) -> None:
    """Clip (ReLU6 is Clip(0, 6)): a fitted polynomial like Relu, where the bounds cut into the
    range the input takes on the calibration data; where they do not (the fit interval lies
    inside [min, max]) Clip is the identity there and costs nothing."""
    lo_b, hi_b = _bound(node, ctx, 1, "min"), _bound(node, ctx, 2, "max")
    x = ctx.tensor(node.input[0], node)
    if lo_b is None and hi_b is None:
        ctx.alias(node.output[0], x, x.shape, node)
        return
    lo_b = -np.inf if lo_b is None else lo_b
    hi_b = np.inf if hi_b is None else hi_b
    if lo_b > hi_b:
        raise UnsupportedOpError(f"Clip node '{node.name}': inputs min={lo_b:g} > max={hi_b:g} make "
                                 f"the output the constant {hi_b:g}, independent of the encrypted "
                                 f"input; fold it into the model instead")
    lo, hi = fit_range(*ctx.range_of(node.input[0]))
    if lo_b <= lo and hi <= hi_b:
        ctx.alias(node.output[0], x, x.shape, node)
        return
    _emit_fit(node, ctx, lambda v: np.minimum(np.maximum(v, lo_b), hi_b), "Clip")
