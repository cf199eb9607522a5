"""Shape-only ops. On a flat C-order vector Flatten, Reshape, Squeeze, Unsqueeze, Identity and
Dropout (inference) change nothing: they bind their output as a new view of the same IR layer
and emit no layer. Shape yields a constant (the encrypted tensor's static shape). Transpose is a
permutation: a 0/1 Linear."""
from __future__ import annotations

import numpy as np
import onnx

from protected_nn.errors import UnsupportedOpError
from protected_nn.frontend.context import LoweringContext, attributes
from protected_nn.frontend.ops.linalg import permutation_matrix


def _optional_const(node, ctx: LoweringContext, index: int, what: str):
    if len(node.input) > index and node.input[index]:
        return np.asarray(ctx.const(node.input[index], node, what))
    return None


def _unused_extra_outputs(node: onnx.NodeProto, what: str) -> None:
    if len(node.output) > 1 and any(node.output[1:]):
        raise UnsupportedOpError(f"{node.op_type} node '{node.name}': the {what} output is not supported")


def lower_identity(node: onnx.NodeProto, ctx: LoweringContext) -> None:
    x = ctx.tensor(node.input[0], node)
    ctx.alias(node.output[0], x, x.shape, node)


def lower_dropout(node: onnx.NodeProto, ctx: LoweringContext) -> None:
    """Inference Dropout is the identity; training mode would be random."""
    training = _optional_const(node, ctx, 2, "training_mode")
    if training is not None and bool(training.reshape(-1)[0]):
        raise UnsupportedOpError(f"Dropout node '{node.name}': training_mode=true is not supported")
    _unused_extra_outputs(node, "mask")
    lower_identity(node, ctx)


def lower_flatten(node: onnx.NodeProto, ctx: LoweringContext) -> None:
    x = ctx.tensor(node.input[0], node)
    axis = int(attributes(node).get("axis", 1))
    if axis < 0:
        axis += len(x.shape)
    if not 0 <= axis <= len(x.shape):
        raise UnsupportedOpError(f"Flatten node '{node.name}': axis out of range for {x.shape}")
    outer = int(np.prod(x.shape[:axis], dtype=np.int64))
    ctx.alias(node.output[0], x, (outer, x.size // max(outer, 1)), node)


def lower_reshape(node: onnx.NodeProto, ctx: LoweringContext) -> None:
    x = ctx.tensor(node.input[0], node)
    target = [int(d) for d in ctx.const(node.input[1], node, "shape").reshape(-1)]
    allowzero = bool(attributes(node).get("allowzero", 0))
    shape = [x.shape[i] if (d == 0 and not allowzero and i < len(x.shape)) else d
             for i, d in enumerate(target)]
    if shape.count(-1) > 1:
        raise UnsupportedOpError(f"Reshape node '{node.name}': more than one -1 in {target}")
    if -1 in shape:
        known = int(np.prod([d for d in shape if d != -1], dtype=np.int64))
        if known == 0 or x.size % known:
            raise UnsupportedOpError(f"Reshape node '{node.name}': cannot reshape {x.shape} to {target}")
        shape[shape.index(-1)] = x.size // known
    ctx.alias(node.output[0], x, tuple(shape), node)


def _axes(node, ctx: LoweringContext) -> list[int] | None:
    """Axes from the input (opset 13+) or the attribute (older), not yet normalized."""
    axes = _optional_const(node, ctx, 1, "axes")
    if axes is None and "axes" in attributes(node):
        axes = np.asarray(attributes(node)["axes"])
    return None if axes is None else [int(a) for a in axes.reshape(-1)]


def _normalize(node, axes: list[int], rank: int) -> list[int]:
    if any(not -rank <= a < rank for a in axes) or len(set(a % rank for a in axes)) != len(axes):
        raise UnsupportedOpError(f"{node.op_type} node '{node.name}': bad axes {axes} for rank {rank}")
    return sorted(a % rank for a in axes)


def lower_squeeze(node: onnx.NodeProto, ctx: LoweringContext) -> None:
    x = ctx.tensor(node.input[0], node)
    axes = _axes(node, ctx)
    if axes is None:
        axes = [i for i, d in enumerate(x.shape) if d == 1]
    axes = _normalize(node, axes, len(x.shape))
    if any(x.shape[a] != 1 for a in axes):
        raise UnsupportedOpError(f"Squeeze node '{node.name}': axes {axes} of {x.shape} are not 1")
    ctx.alias(node.output[0], x, tuple(d for i, d in enumerate(x.shape) if i not in axes), node)


def lower_unsqueeze(node: onnx.NodeProto, ctx: LoweringContext) -> None:
    x = ctx.tensor(node.input[0], node)
    axes = _axes(node, ctx)
    if not axes:
        raise UnsupportedOpError(f"Unsqueeze node '{node.name}': axes are required")
    axes = _normalize(node, axes, len(x.shape) + len(axes))
    shape = list(x.shape)
    for a in axes:
        shape.insert(a, 1)
    ctx.alias(node.output[0], x, tuple(shape), node)


def lower_shape(node: onnx.NodeProto, ctx: LoweringContext) -> None:
    """The shape of an encrypted tensor is static (batch 1): a public constant."""
    x = ctx.tensor(node.input[0], node)
    attrs = attributes(node)
    start, end = attrs.get("start", 0), attrs.get("end", None)
    ctx.set_const(node.output[0], np.array(x.shape[start:end], dtype=np.int64))


def lower_transpose(node: onnx.NodeProto, ctx: LoweringContext) -> None:
    x = ctx.tensor(node.input[0], node)
    perm = tuple(attributes(node).get("perm", range(len(x.shape) - 1, -1, -1)))
    if sorted(perm) != list(range(len(x.shape))):
        raise UnsupportedOpError(f"Transpose node '{node.name}': perm {perm} for {x.shape}")
    out_shape = tuple(x.shape[p] for p in perm)
    moved = [p for p in perm if x.shape[p] != 1]
    if moved == sorted(moved):
        ctx.alias(node.output[0], x, out_shape, node)   # only moves size-1 axes: a pure view
        return
    ctx.linear(node, x, permutation_matrix(x.shape, perm), None, out_shape)
