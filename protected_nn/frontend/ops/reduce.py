"""ReduceMean / ReduceSum over any axes (spatial axes in a CNN: a global pool written as a
reduction, as PyTorch's `x.mean((2, 3))` exports) -> one `Linear`; ReduceSumSquare -> `Square`
then that `Linear`. Axes come from the attribute (before opset 18; ReduceSum before 13) or the
second input (the later form); `keepdims` and `noop_with_empty_axes` as ONNX defines them."""
from __future__ import annotations

import numpy as np
import onnx
import scipy.sparse as sp

from protected_nn import ir
from protected_nn.errors import UnsupportedOpError
from protected_nn.frontend.context import LoweringContext, Tensor, attributes, ir_shape


def _reduced_axes(node, ctx: LoweringContext, rank: int) -> list[int] | None:
    """Sorted axes to reduce; None for the no-op (empty axes with noop_with_empty_axes=1)."""
    attrs = attributes(node)
    axes = None
    if len(node.input) > 1 and node.input[1]:
        axes = np.asarray(ctx.const(node.input[1], node, "axes")).reshape(-1)
    elif "axes" in attrs:
        axes = np.asarray(attrs["axes"]).reshape(-1)
    if axes is None or axes.size == 0:
        return None if attrs.get("noop_with_empty_axes", 0) else list(range(rank))
    axes = [int(a) for a in axes]
    if any(not -rank <= a < rank for a in axes) or len({a % rank for a in axes}) != len(axes):
        raise UnsupportedOpError(f"{node.op_type} node '{node.name}': axes {axes} are invalid "
                                 f"for a rank-{rank} input")
    return sorted(a % rank for a in axes)


def _reduce(node, ctx: LoweringContext, x: Tensor, mean: bool) -> None:
    rank = len(x.shape)
    axes = _reduced_axes(node, ctx, rank)
    if axes is None:
        axes = []
    keep = bool(attributes(node).get("keepdims", 1))
    kept_shape = tuple(1 if d in axes else n for d, n in enumerate(x.shape))
    coords = np.indices(x.shape).reshape(rank, -1)
    coords[axes] = 0
    rows = np.ravel_multi_index(tuple(coords), kept_shape) if rank else np.zeros(1, np.int64)
    count = int(np.prod([x.shape[a] for a in axes], dtype=np.int64))
    vals = np.full(x.size, 1.0 / count if mean else 1.0)
    n_out = int(np.prod(kept_shape, dtype=np.int64))
    mat = sp.csr_matrix((vals, (rows, np.arange(x.size))), shape=(n_out, x.size))
    out_shape = kept_shape if keep else tuple(n for d, n in enumerate(x.shape) if d not in axes)
    ctx.linear(node, x, mat, None, out_shape)
    if axes and min(axes) >= 2:        # over space only: a global pool (compiler/pooling.py)
        ctx.layers[-1].pool = True


def lower_reduce_mean(node: onnx.NodeProto, ctx: LoweringContext) -> None:
    _reduce(node, ctx, ctx.tensor(node.input[0], node), mean=True)


def lower_reduce_sum(node: onnx.NodeProto, ctx: LoweringContext) -> None:
    _reduce(node, ctx, ctx.tensor(node.input[0], node), mean=False)


def lower_reduce_sum_square(node: onnx.NodeProto, ctx: LoweringContext) -> None:
    x = ctx.tensor(node.input[0], node)
    sq = ir.Square(name=ctx.fresh_name(node.output[0] + ":square"), inputs=[x.layer],
                   shape=ir_shape(x.shape), sources=[node.name])
    _reduce(node, ctx, ctx.emit(sq, None, x.shape, node), mean=False)
