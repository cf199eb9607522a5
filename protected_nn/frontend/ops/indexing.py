"""Ops that move or repeat values without arithmetic: Pad, Slice, Gather (constant indices),
Expand, Tile, DepthToSpace, SpaceToDepth. Each applies the numpy operation to an *index array*
of the input (element i holds i; a constant position holds -1) and lowers the result to a 0/1
`Linear` (+ a bias for constant positions): exact, no level of its own, and fused into the
neighbouring linear layer (a zero Pad before a Conv becomes that Conv's padding)."""
from __future__ import annotations

import numpy as np
import onnx

from protected_nn.errors import UnsupportedOpError
from protected_nn.frontend.context import LoweringContext, Tensor, attributes
from protected_nn.frontend.ops.linalg import index_array, selection_matrix

_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "edge", "wrap": "wrap"}


def _optional_const(node, ctx: LoweringContext, index: int, what: str):
    if len(node.input) > index and node.input[index]:
        return np.asarray(ctx.const(node.input[index], node, what))
    return None


def _axes_list(node, axes, rank: int) -> list[int]:
    axes = [int(a) for a in np.asarray(axes).reshape(-1)]
    if any(not -rank <= a < rank for a in axes) or len({a % rank for a in axes}) != len(axes):
        raise UnsupportedOpError(f"{node.op_type} node '{node.name}': input axes {axes} are "
                                 f"invalid for a rank-{rank} tensor")
    return [a % rank for a in axes]


def _emit_selection(node, ctx: LoweringContext, x: Tensor, src: np.ndarray,
                    fill: np.ndarray | float | None = None) -> None:
    """Bind node.output[0] = x gathered at `src` (an index array of the output's shape), with
    `fill` where src < 0."""
    bias = None
    if fill is not None and np.any(src < 0):
        bias = np.where(src < 0, fill, 0.0)
    ctx.linear(node, x, selection_matrix(src, x.size), bias, src.shape)


def lower_pad(node: onnx.NodeProto, ctx: LoweringContext) -> None:
    x = ctx.tensor(node.input[0], node)
    where = f"Pad node '{node.name}'"
    mode = attributes(node).get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if mode not in _PAD_MODES:
        raise UnsupportedOpError(f"{where}: attribute mode={mode!r} is not supported "
                                 f"(constant, reflect, edge, wrap)")
    rank = len(x.shape)
    pads = [int(p) for p in np.asarray(ctx.const(node.input[1], node, "pads")).reshape(-1)]
    value = _optional_const(node, ctx, 2, "constant_value")
    value = 0.0 if value is None or value.size == 0 else float(value.reshape(-1)[0])
    axes = _optional_const(node, ctx, 3, "axes")
    axes = list(range(rank)) if axes is None else _axes_list(node, axes, rank)
    if len(pads) != 2 * len(axes):
        raise UnsupportedOpError(f"{where}: input pads has {len(pads)} values for "
                                 f"{len(axes)} axes (needs begins then ends: {2 * len(axes)})")
    widths = [(0, 0)] * rank
    for i, a in enumerate(axes):
        widths[a] = (pads[i], pads[i + len(axes)])
    src = index_array(x.shape)
    if any(b < 0 or e < 0 for b, e in widths):   # negative pads crop
        if mode != "constant":
            raise UnsupportedOpError(f"{where}: negative pads {pads} (cropping) are supported "
                                     f"only with mode='constant', not mode={mode!r}")
        src = src[tuple(slice(-min(b, 0), src.shape[d] + min(e, 0)) for d, (b, e) in enumerate(widths))]
    widths = [(max(b, 0), max(e, 0)) for b, e in widths]
    if mode == "constant":
        src = np.pad(src, widths, mode="constant", constant_values=-1)
    else:   # numpy's reflect/edge/wrap are ONNX's (onnx's reference implementation is np.pad)
        src = np.pad(src, widths, mode=_PAD_MODES[mode])
    if src.size == 0:
        raise UnsupportedOpError(f"{where}: pads {pads} leave an empty tensor")
    _emit_selection(node, ctx, x, src, value)


def lower_slice(node: onnx.NodeProto, ctx: LoweringContext) -> None:
    x = ctx.tensor(node.input[0], node)
    rank = len(x.shape)
    starts = np.asarray(ctx.const(node.input[1], node, "starts")).reshape(-1)
    ends = np.asarray(ctx.const(node.input[2], node, "ends")).reshape(-1)
    axes = _optional_const(node, ctx, 3, "axes")
    axes = list(range(starts.size)) if axes is None else _axes_list(node, axes, rank)
    steps = _optional_const(node, ctx, 4, "steps")
    steps = np.ones(starts.size, dtype=np.int64) if steps is None else steps.reshape(-1)
    if not starts.size == ends.size == len(axes) == steps.size or np.any(steps == 0):
        raise UnsupportedOpError(f"Slice node '{node.name}': starts/ends/axes/steps must have "
                                 f"equal lengths and non-zero steps")
    index = [slice(None)] * rank
    for a, s, e, st in zip(axes, starts, ends, steps):
        index[a] = slice(int(s), int(e), int(st))   # numpy clamps like ONNX
    src = index_array(x.shape)[tuple(index)]
    if src.size == 0:
        raise UnsupportedOpError(f"Slice node '{node.name}': the slice of {x.shape} is empty")
    _emit_selection(node, ctx, x, src)


def lower_gather(node: onnx.NodeProto, ctx: LoweringContext) -> None:
    x = ctx.tensor(node.input[0], node)
    indices = np.asarray(ctx.const(node.input[1], node, "indices")).astype(np.int64)
    axis = int(attributes(node).get("axis", 0))
    rank = len(x.shape)
    if not -rank <= axis < rank:
        raise UnsupportedOpError(f"Gather node '{node.name}': axis {axis} for a rank-{rank} tensor")
    dim = x.shape[axis]
    if np.any(indices < -dim) or np.any(indices >= dim):
        raise UnsupportedOpError(f"Gather node '{node.name}': indices outside [-{dim}, {dim - 1}]")
    _emit_selection(node, ctx, x, np.take(index_array(x.shape), indices, axis=axis))


def lower_expand(node: onnx.NodeProto, ctx: LoweringContext) -> None:
    x = ctx.tensor(node.input[0], node)
    shape = tuple(int(d) for d in np.asarray(ctx.const(node.input[1], node, "shape")).reshape(-1))
    try:
        out = np.broadcast_shapes(x.shape, shape)
    except ValueError:
        raise UnsupportedOpError(f"Expand node '{node.name}': {x.shape} does not broadcast to "
                                 f"{shape}") from None
    _emit_selection(node, ctx, x, np.broadcast_to(index_array(x.shape), out).copy())


def lower_tile(node: onnx.NodeProto, ctx: LoweringContext) -> None:
    x = ctx.tensor(node.input[0], node)
    repeats = [int(r) for r in np.asarray(ctx.const(node.input[1], node, "repeats")).reshape(-1)]
    if len(repeats) != len(x.shape) or min(repeats) < 1:
        raise UnsupportedOpError(f"Tile node '{node.name}': repeats {repeats} must be one "
                                 f"positive value per axis of {x.shape}")
    _emit_selection(node, ctx, x, np.tile(index_array(x.shape), repeats))


def _block_args(node, x: Tensor) -> tuple[int, int, int, int, int, str]:
    """(N, C, H, W, blocksize, mode) of a DepthToSpace/SpaceToDepth node (a fixed leading
    dimension N is part of the one input, see docs/ops.md)."""
    if len(x.shape) != 4:
        raise UnsupportedOpError(f"{node.op_type} node '{node.name}': input {x.shape} must be "
                                 f"(N, C, H, W)")
    attrs = attributes(node)
    mode = attrs.get("mode", b"DCR")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if mode not in ("DCR", "CRD"):
        raise UnsupportedOpError(f"{node.op_type} node '{node.name}': attribute mode={mode!r} "
                                 f"(DCR or CRD)")
    return (*x.shape, int(attrs.get("blocksize", 0)), mode)


def lower_depth_to_space(node: onnx.NodeProto, ctx: LoweringContext) -> None:
    x = ctx.tensor(node.input[0], node)
    N, C, H, W, b, mode = _block_args(node, x)
    if b < 1 or C % (b * b):
        raise UnsupportedOpError(f"DepthToSpace node '{node.name}': attribute blocksize={b}: "
                                 f"blocksize^2 must divide the {C} channels")
    src = index_array(x.shape)
    if mode == "DCR":
        src = src.reshape(N, b, b, C // (b * b), H, W).transpose(0, 3, 4, 1, 5, 2)
    else:
        src = src.reshape(N, C // (b * b), b, b, H, W).transpose(0, 1, 4, 2, 5, 3)
    _emit_selection(node, ctx, x, src.reshape(N, C // (b * b), H * b, W * b))


def lower_space_to_depth(node: onnx.NodeProto, ctx: LoweringContext) -> None:
    x = ctx.tensor(node.input[0], node)
    N, C, H, W, b, mode = _block_args(node, x)
    if b < 1 or H % b or W % b:
        raise UnsupportedOpError(f"SpaceToDepth node '{node.name}': attribute blocksize={b} must "
                                 f"divide H={H} and W={W}")
    src = index_array(x.shape).reshape(N, C, H // b, b, W // b, b)
    src = src.transpose(0, 3, 5, 1, 2, 4) if mode == "DCR" else src.transpose(0, 1, 3, 5, 2, 4)
    _emit_selection(node, ctx, x, src.reshape(N, C * b * b, H // b, W // b))
