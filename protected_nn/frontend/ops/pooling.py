"""AveragePool, GlobalAveragePool and the MaxPool / GlobalMaxPool approximation -> Linear.

MaxPool has no polynomial-friendly form; like CryptoNets' "scaled mean pool" we replace it by a
scaled sum of the window. We choose the scale 1/(number of in-bounds window elements), i.e. the
mean: it equals the max on flat windows and keeps the magnitudes of the original network (a pure
sum would multiply them by the window size). It is still an approximation: a graph warning says
so, and a network meant for encrypted inference should be trained with AveragePool instead.
"""
from __future__ import annotations

import numpy as np
import onnx
import scipy.sparse as sp

from protected_nn.errors import UnsupportedOpError
from protected_nn.frontend.context import LoweringContext, Tensor, attributes
from protected_nn.frontend.ops.spatial import Window, axis_taps, make_window, window_taps


def _check_nchw(node: onnx.NodeProto, x: Tensor) -> tuple[int, int, int]:
    if len(x.shape) != 4 or x.shape[0] != 1:
        raise UnsupportedOpError(f"{node.op_type} node '{node.name}': only 2-D pooling of "
                                 f"(1, C, H, W) inputs is supported (input {x.shape})")
    return x.shape[1], x.shape[2], x.shape[3]


def _padded_counts(win: Window) -> np.ndarray:
    """Per output position, how many window elements lie inside input + explicit pads
    (the count_include_pad=1 divisor; window parts beyond the pads, from ceil_mode, excluded)."""
    counts = []
    for axis in (0, 1):
        n, pb, pe = win.in_hw[axis], win.pads[axis], win.pads[axis + 2]
        c = np.zeros(win.out_hw[axis])
        for k in range(win.kernel[axis]):
            _, pos = axis_taps(win, axis, k)
            c += (pos >= -pb) & (pos < n + pe)
        counts.append(c)
    return (counts[0][:, None] * counts[1][None, :]).reshape(-1)


def _pool_matrix(C: int, win: Window, count_include_pad: bool) -> sp.csr_matrix:
    H, W = win.in_hw
    OH, OW = win.out_hw
    taps = [(o, i) for _, _, o, i in window_taps(win) if o.size]
    out_all = np.concatenate([o for o, _ in taps])
    in_all = np.concatenate([i for _, i in taps])
    if count_include_pad:
        divisor = _padded_counts(win)
    else:
        divisor = np.bincount(out_all, minlength=OH * OW).astype(np.float64)
    if np.any(divisor == 0):
        raise UnsupportedOpError("a pooling window covers only padding")
    ch = np.arange(C)[:, None]
    rows = (ch * (OH * OW) + out_all[None, :]).reshape(-1)
    cols = (ch * (H * W) + in_all[None, :]).reshape(-1)
    vals = np.broadcast_to(1.0 / divisor[out_all][None, :], (C, out_all.size)).reshape(-1)
    return sp.csr_matrix((vals, (rows, cols)), shape=(C * OH * OW, C * H * W))


def _window_pool(node: onnx.NodeProto, ctx: LoweringContext, count_include_pad: bool) -> None:
    attrs = attributes(node)
    x = ctx.tensor(node.input[0], node)
    C, H, W = _check_nchw(node, x)
    if "kernel_shape" not in attrs:
        raise UnsupportedOpError(f"{node.op_type} node '{node.name}': kernel_shape is required")
    win = make_window(node, attrs, (H, W), tuple(attrs["kernel_shape"]),
                      ceil_mode=bool(attrs.get("ceil_mode", 0)))
    ctx.linear(node, x, _pool_matrix(C, win, count_include_pad), None, (1, C, *win.out_hw))
    _mark_pool(ctx)


def lower_average_pool(node: onnx.NodeProto, ctx: LoweringContext) -> None:
    _window_pool(node, ctx, bool(attributes(node).get("count_include_pad", 0)))


def lower_global_average_pool(node: onnx.NodeProto, ctx: LoweringContext) -> None:
    x = ctx.tensor(node.input[0], node)
    if len(x.shape) < 3 or x.shape[0] != 1:
        raise UnsupportedOpError(f"GlobalAveragePool node '{node.name}': input {x.shape} must be "
                                 f"(1, C, spatial...)")
    C = x.shape[1]
    per = x.size // C
    mat = sp.kron(sp.identity(C, format="csr"), sp.csr_matrix(np.full((1, per), 1.0 / per)),
                  format="csr")
    ctx.linear(node, x, mat, None, (1, C) + (1,) * (len(x.shape) - 2))
    _mark_pool(ctx)


def _mark_pool(ctx: LoweringContext) -> None:
    """The layer just emitted is a public window mean (no trained weight): the compiler may run
    it as a rotate-and-add sum (compiler/pooling.py) instead of fusing it into the next layer."""
    ctx.layers[-1].pool = True


def lower_global_max_pool(node: onnx.NodeProto, ctx: LoweringContext) -> None:
    """The same mean-for-max approximation as MaxPool, over the whole feature map."""
    lower_global_average_pool(node, ctx)
    ctx.warn(_max_warning(node))


def _max_warning(node: onnx.NodeProto) -> str:
    return (f"{node.op_type} node '{node.name}' is approximated by the mean of each window "
            f"(scaled-sum approximation): results differ from onnxruntime's {node.op_type}; "
            f"train with AveragePool for exact encrypted inference")


def lower_max_pool(node: onnx.NodeProto, ctx: LoweringContext) -> None:
    if len(node.output) > 1 and node.output[1]:
        raise UnsupportedOpError(f"MaxPool node '{node.name}': the Indices output is not supported")
    if attributes(node).get("storage_order", 0):
        raise UnsupportedOpError(f"MaxPool node '{node.name}': storage_order=1 is not supported")
    _window_pool(node, ctx, count_include_pad=False)
    ctx.warn(_max_warning(node))
