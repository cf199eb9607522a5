"""Elementwise arithmetic. With a constant operand Add/Sub/Mul/Div are affine -> Linear (bias,
diagonal scale, broadcast); between encrypted tensors Add/Sub/Sum -> ir.Add (Sub negates one
branch with a -I Linear); Mul(x, x) and Pow(x, 2) -> ir.Square, Pow(x, k) -> exact ir.Poly. A product of two different
encrypted tensors is not supported by the IR."""
from __future__ import annotations

import numpy as np
import onnx
import scipy.sparse as sp

from protected_nn import ir
from protected_nn.errors import UnsupportedOpError
from protected_nn.frontend.context import LoweringContext, Tensor, ir_shape
from protected_nn.frontend.ops.linalg import broadcast_matrix, diagonal


def _out_shape(node, *shapes) -> tuple[int, ...]:
    try:
        return tuple(np.broadcast_shapes(*[tuple(s) for s in shapes]))
    except ValueError:
        raise UnsupportedOpError(f"{node.op_type} node '{node.name}': shapes "
                                 f"{[tuple(s) for s in shapes]} do not broadcast") from None


def _affine(node, ctx: LoweringContext, x: Tensor, scale, bias, out_shape) -> None:
    """Bind node.output[0] = scale * broadcast(x) + bias (scale/bias broadcast to out_shape)."""
    S = broadcast_matrix(x.shape, out_shape)
    if scale is not None:
        S = diagonal(np.broadcast_to(np.asarray(scale, dtype=np.float64), out_shape)) @ S
    b = None if bias is None else np.broadcast_to(np.asarray(bias, dtype=np.float64), out_shape)
    ctx.linear(node, x, S, b, out_shape)


def _to_shape(node, ctx: LoweringContext, x: Tensor, out_shape, sign: float, tag: str) -> Tensor:
    """x broadcast to out_shape and multiplied by sign, via a helper Linear when needed."""
    if sign == 1.0 and x.size == int(np.prod(out_shape, dtype=np.int64)):
        return Tensor(x.layer, tuple(out_shape))   # broadcasting that adds only size-1 axes
    S = sign * broadcast_matrix(x.shape, out_shape)
    return ctx.linear(node, x, S, None, out_shape, bind=False, suffix=f":{tag}")


def _join(node, ctx: LoweringContext, terms: list[tuple[Tensor, float]], const) -> None:
    """Bind node.output[0] = sum(sign * tensor) + const with one ir.Add (+ a bias Linear)."""
    out_shape = _out_shape(node, *[t.shape for t, _ in terms],
                           *([] if const is None else [np.shape(const)]))
    parts = [_to_shape(node, ctx, t, out_shape, sign, f"term{i}") for i, (t, sign) in enumerate(terms)]
    name = node.output[0] if const is None else node.output[0] + ":sum"
    layer = ir.Add(name=ctx.fresh_name(name), inputs=[p.layer for p in parts],
                   shape=ir_shape(out_shape), sources=[node.name])
    summed = ctx.emit(layer, node.output[0] if const is None else None, out_shape, node)
    if const is not None:
        n = summed.size
        ctx.linear(node, summed, sp.identity(n, format="csr"),
                   np.broadcast_to(np.asarray(const, dtype=np.float64), out_shape), out_shape)


def _operands(node, ctx: LoweringContext):
    names = [n for n in node.input]
    return [(ctx.tensor(n, node) if ctx.is_encrypted(n) else None,
             None if ctx.is_encrypted(n) else np.asarray(ctx.const(n, node), dtype=np.float64))
            for n in names]


def lower_add(node: onnx.NodeProto, ctx: LoweringContext) -> None:
    _add_sub(node, ctx, sign=1.0)


def lower_sub(node: onnx.NodeProto, ctx: LoweringContext) -> None:
    _add_sub(node, ctx, sign=-1.0)


def _add_sub(node, ctx: LoweringContext, sign: float) -> None:
    (a, ca), (b, cb) = _operands(node, ctx)
    if a is not None and b is not None:
        _join(node, ctx, [(a, 1.0), (b, sign)], None)
    elif a is not None:          # x +- c
        _affine(node, ctx, a, None, sign * cb, _out_shape(node, a.shape, cb.shape))
    else:                        # c +- x
        _affine(node, ctx, b, sign, ca, _out_shape(node, ca.shape, b.shape))


def lower_sum(node: onnx.NodeProto, ctx: LoweringContext) -> None:
    ops = _operands(node, ctx)
    tensors = [t for t, _ in ops if t is not None]
    consts = [c for t, c in ops if t is None]
    const = None
    if consts:
        const = consts[0]
        for c in consts[1:]:
            const = const + c
    if len(tensors) == 1:
        out_shape = _out_shape(node, tensors[0].shape, *[c.shape for c in consts])
        _affine(node, ctx, tensors[0], None, const, out_shape)
    else:
        _join(node, ctx, [(t, 1.0) for t in tensors], const)


def _square(node, ctx: LoweringContext, x: Tensor) -> None:
    layer = ir.Square(name=ctx.fresh_name(node.output[0]), inputs=[x.layer],
                      shape=ir_shape(x.shape), sources=[node.name])
    ctx.emit(layer, node.output[0], x.shape, node)


def lower_mul(node: onnx.NodeProto, ctx: LoweringContext) -> None:
    (a, ca), (b, cb) = _operands(node, ctx)
    if a is not None and b is not None:
        if a == b:
            _square(node, ctx, a)
            return
        raise UnsupportedOpError(
            f"Mul node '{node.name}': product of two different encrypted tensors "
            f"('{node.input[0]}', '{node.input[1]}'); only x*x or a product with a constant is supported")
    x, c = (a, cb) if a is not None else (b, ca)
    _affine(node, ctx, x, c, None, _out_shape(node, x.shape, c.shape))


def lower_div(node: onnx.NodeProto, ctx: LoweringContext) -> None:
    if not ctx.is_const(node.input[1]):
        raise UnsupportedOpError(f"Div node '{node.name}': division by an encrypted tensor "
                                 f"('{node.input[1]}') is not supported; only by a constant")
    x = ctx.tensor(node.input[0], node)
    c = np.asarray(ctx.const(node.input[1], node, "divisor"), dtype=np.float64)
    if np.any(c == 0):
        raise UnsupportedOpError(f"Div node '{node.name}': the constant divisor contains zeros")
    _affine(node, ctx, x, 1.0 / c, None, _out_shape(node, x.shape, c.shape))


MAX_POW = 16


def lower_pow(node: onnx.NodeProto, ctx: LoweringContext) -> None:
    """x ** k for one constant integer k: k=2 is a Square, k=1 a view, k=0 a constant Linear,
    3..MAX_POW an exact monomial Poly (the compiler evaluates it by repeated products)."""
    x = ctx.tensor(node.input[0], node)
    e = np.asarray(ctx.const(node.input[1], node, "exponent"), dtype=np.float64).reshape(-1)
    if e.size != 1 or e[0] != np.round(e[0]) or not 0 <= e[0] <= MAX_POW:
        raise UnsupportedOpError(f"Pow node '{node.name}': exponent {e.tolist()[:8]} is not supported "
                                 f"(only one constant integer in 0..{MAX_POW})")
    k = int(e[0])
    if k == 2:
        _square(node, ctx, x)
    elif k == 1:
        ctx.alias(node.output[0], x, x.shape, node)
    elif k == 0:
        ctx.linear(node, x, sp.csr_matrix((x.size, x.size)), np.ones(x.size), x.shape)
    else:
        coeffs = np.zeros(k + 1)
        coeffs[k] = 1.0
        layer = ir.Poly(name=ctx.fresh_name(node.output[0]), inputs=[x.layer],
                        shape=ir_shape(x.shape), sources=[node.name], coeffs=coeffs, op="Pow",
                        fit_range=ctx.range_of(node.input[0]), fit_max_error=0.0)  # exact anywhere
        ctx.emit(layer, node.output[0], x.shape, node)


def lower_neg(node: onnx.NodeProto, ctx: LoweringContext) -> None:
    x = ctx.tensor(node.input[0], node)
    _affine(node, ctx, x, -1.0, None, x.shape)


def lower_mean(node: onnx.NodeProto, ctx: LoweringContext) -> None:
    """Mean of n inputs = their Sum scaled by 1/n (each encrypted term through a scaling Linear
    that fuses into its branch)."""
    ops = _operands(node, ctx)
    n = len(ops)
    tensors = [t for t, _ in ops if t is not None]
    consts = [c for t, c in ops if t is None]
    const = sum(consts[1:], consts[0]) / n if consts else None
    if len(tensors) == 1:
        out_shape = _out_shape(node, tensors[0].shape, *[c.shape for c in consts])
        _affine(node, ctx, tensors[0], 1.0 / n, const, out_shape)
    else:
        _join(node, ctx, [(t, 1.0 / n) for t in tensors], const)
