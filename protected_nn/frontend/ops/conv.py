"""Conv (2-D, any group count - grouped, depthwise - stride/padding/dilation, optional bias)
-> one sparse Linear. A 1x1 (pointwise) convolution is the same code with a 1x1 window."""
from __future__ import annotations

import numpy as np
import onnx
import scipy.sparse as sp

from protected_nn.errors import UnsupportedOpError
from protected_nn.frontend.context import LoweringContext, attributes
from protected_nn.frontend.ops.spatial import make_window, window_taps


def _check_groups(where: str, group, C: int, M: int, Cw: int) -> int:
    """Validate `group` against the input (C) and weight (M, Cw, ...) channel counts."""
    if not isinstance(group, int) or group < 1:
        raise UnsupportedOpError(f"{where}: attribute group={group!r} must be a positive integer")
    if C % group or M % group:
        raise UnsupportedOpError(f"{where}: attribute group={group} does not divide the {C} input "
                                 f"and {M} output channels")
    if Cw != C // group:
        raise UnsupportedOpError(f"{where}: weight has {Cw} input channels per group, but the "
                                 f"input's {C} channels in group={group} give {C // group}")
    return group


def lower_conv(node: onnx.NodeProto, ctx: LoweringContext) -> None:
    attrs = attributes(node)
    x = ctx.tensor(node.input[0], node)
    weight = np.asarray(ctx.const(node.input[1], node, "weight"), dtype=np.float64)
    bias = None
    if len(node.input) > 2 and node.input[2]:
        bias = np.asarray(ctx.const(node.input[2], node, "bias"), dtype=np.float64).reshape(-1)
    where = f"Conv node '{node.name}'"
    if len(x.shape) != 4 or weight.ndim != 4:
        raise UnsupportedOpError(f"{where}: only 2-D convolution on (1, C, H, W) inputs is "
                                 f"supported (input {x.shape}, weight {weight.shape}); 1-D and "
                                 f"3-D convolutions are not")
    if x.shape[0] != 1:
        raise UnsupportedOpError(f"{where}: batch {x.shape[0]} (only batch 1)")
    _, C, H, W = x.shape
    M, Cw, kh, kw = weight.shape
    group = _check_groups(where, attrs.get("group", 1), C, M, Cw)
    if "kernel_shape" in attrs and tuple(attrs["kernel_shape"]) != (kh, kw):
        raise UnsupportedOpError(f"{where}: kernel_shape {attrs['kernel_shape']} != weight {(kh, kw)}")
    if bias is not None and bias.size != M:
        raise UnsupportedOpError(f"{where}: bias has {bias.size} values for {M} output channels")
    win = make_window(node, attrs, (H, W), (kh, kw))
    OH, OW = win.out_hw
    rows, cols, vals = [], [], []
    # output channel m reads input channels g*Cw .. g*Cw+Cw-1 of its group g = m // (M/group)
    m = np.arange(M)[:, None, None]
    c = (np.arange(M) // (M // group))[:, None, None] * Cw + np.arange(Cw)[None, :, None]
    for ky, kx, out_flat, in_flat in window_taps(win):
        if out_flat.size == 0:
            continue
        shape = (M, Cw, out_flat.size)
        rows.append(np.broadcast_to(m * (OH * OW) + out_flat[None, None, :], shape).reshape(-1))
        cols.append(np.broadcast_to(c * (H * W) + in_flat[None, None, :], shape).reshape(-1))
        vals.append(np.broadcast_to(weight[:, :, ky, kx][:, :, None], shape).reshape(-1))
    n_out, n_in = M * OH * OW, C * H * W
    if rows:
        mat = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                            shape=(n_out, n_in))
    else:
        mat = sp.csr_matrix((n_out, n_in))
    b = np.repeat(bias, OH * OW) if bias is not None else None
    ctx.linear(node, x, mat, b, (1, M, OH, OW))
