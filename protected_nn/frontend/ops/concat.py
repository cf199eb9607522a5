"""Concat of encrypted tensors and constants along any axis (channels in a CNN: Inception and
DenseNet-style joins) -> a multi-input linear map, like residual joins: each distinct encrypted
source is placed into its output positions by a 0/1 `Linear` (fused into that branch's last
linear layer), the branches meet in one `ir.Add`, constant parts are the first branch's bias.
No level of its own, no product."""
from __future__ import annotations

import numpy as np
import onnx

from protected_nn import ir
from protected_nn.errors import UnsupportedOpError
from protected_nn.frontend.context import LoweringContext, attributes, ir_shape
from protected_nn.frontend.ops.linalg import index_array, selection_matrix


def lower_concat(node: onnx.NodeProto, ctx: LoweringContext) -> None:
    where = f"Concat node '{node.name}'"
    parts = [(ctx.tensors[n], None) if ctx.is_encrypted(n)
             else (None, np.asarray(ctx.const(n, node), dtype=np.float64)) for n in node.input]
    shapes = [t.shape if t is not None else c.shape for t, c in parts]
    rank = len(shapes[0])
    axis = int(attributes(node).get("axis", 0))
    if not -rank <= axis < rank:
        raise UnsupportedOpError(f"{where}: attribute axis={axis} for rank-{rank} inputs")
    axis %= rank
    rest = {tuple(s[:axis]) + tuple(s[axis + 1:]) for s in shapes}
    if len(rest) != 1 or any(len(s) != rank for s in shapes):
        raise UnsupportedOpError(f"{where}: input shapes {shapes} differ outside axis {axis}")
    # per input: where its values go, as an index array (-1 = another input's position)
    offsets = np.cumsum([0] + [s[axis] for s in shapes])
    out_shape = list(shapes[0])
    out_shape[axis] = int(offsets[-1])
    out_shape = tuple(out_shape)
    owner = np.concatenate([np.full(s, i, dtype=np.int64) for i, s in enumerate(shapes)], axis=axis)
    local = np.concatenate([index_array(s) for s in shapes], axis=axis)
    bias = np.zeros(out_shape)
    for i, (t, c) in enumerate(parts):
        if t is None:
            bias[owner == i] = c.reshape(-1)
    # one selection per distinct IR layer (two views of one layer share a matrix)
    by_layer: dict[str, list[int]] = {}
    for i, (t, _) in enumerate(parts):
        if t is not None:
            by_layer.setdefault(t.layer, []).append(i)
    branches = []
    for k, (layer, members) in enumerate(by_layer.items()):
        src = np.where(np.isin(owner, members), local, -1)
        size = parts[members[0]][0].size
        S = selection_matrix(src, size)
        b = bias if k == 0 else None
        x = parts[members[0]][0]
        if len(by_layer) == 1:
            ctx.linear(node, x, S, b, out_shape)
            return
        branches.append(ctx.linear(node, x, S, b, out_shape, bind=False, suffix=f":part{k}"))
    joined = ir.Add(name=ctx.fresh_name(node.output[0]), inputs=[b.layer for b in branches],
                    shape=ir_shape(out_shape), sources=[node.name])
    ctx.emit(joined, node.output[0], out_shape, node)
