"""Sliding-window geometry shared by Conv and the pooling ops (2-D, NCHW).

`window_taps` enumerates, per kernel offset, which output position reads which input position;
Conv and pooling turn those index arrays into sparse matrices with numpy (no pixel loops).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx

from protected_nn.errors import UnsupportedOpError


@dataclass
class Window:
    in_hw: tuple[int, int]
    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilations: tuple[int, int]
    pads: tuple[int, int, int, int]   # top, left, bottom, right (ONNX order: begins then ends)
    out_hw: tuple[int, int]


def _out_size(n: int, k: int, s: int, d: int, pb: int, pe: int, ceil_mode: bool) -> int:
    span = n + pb + pe - ((k - 1) * d + 1)
    out = (math.ceil(span / s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= n + pb:
        out -= 1   # the last window must start inside the input or its leading pad
    return out


def make_window(node: onnx.NodeProto, attrs: dict, in_hw: tuple[int, int],
                kernel: tuple[int, int], ceil_mode: bool = False) -> Window:
    name = f"{node.op_type} node '{node.name}'"
    if len(kernel) != 2:
        raise UnsupportedOpError(f"{name}: only 2-D windows are supported (kernel {kernel})")
    strides = tuple(attrs.get("strides", (1, 1)))
    dilations = tuple(attrs.get("dilations", (1, 1)))
    if len(strides) != 2 or len(dilations) != 2 or min(strides) < 1 or min(dilations) < 1:
        raise UnsupportedOpError(f"{name}: bad strides {strides} or dilations {dilations}")
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("NOTSET", ""):
        pads = tuple(attrs.get("pads", (0, 0, 0, 0)))
        if len(pads) != 4 or min(pads) < 0:
            raise UnsupportedOpError(f"{name}: pads {pads} must be 4 non-negative values")
    elif auto_pad == "VALID":
        pads = (0, 0, 0, 0)
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for n, k, s, d in zip(in_hw, kernel, strides, dilations):
            out = -(-n // s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - n)
            small, big = total // 2, total - total // 2
            begins.append(small if auto_pad == "SAME_UPPER" else big)
            ends.append(big if auto_pad == "SAME_UPPER" else small)
        pads = (*begins, *ends)
    else:
        raise UnsupportedOpError(f"{name}: auto_pad {auto_pad!r} is not supported")
    out_hw = tuple(_out_size(n, k, s, d, pads[i], pads[i + 2], ceil_mode)
                   for i, (n, k, s, d) in enumerate(zip(in_hw, kernel, strides, dilations)))
    if min(out_hw) < 1:
        raise UnsupportedOpError(f"{name}: the window does not fit the {in_hw} input")
    return Window(tuple(in_hw), tuple(kernel), strides, dilations, pads, out_hw)


def axis_taps(w: Window, axis: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Input coordinate read by kernel offset k for every output coordinate along `axis`."""
    out = np.arange(w.out_hw[axis])
    pos = out * w.strides[axis] - w.pads[axis] + k * w.dilations[axis]
    return out, pos


def window_taps(w: Window):
    """Yield (ky, kx, out_flat, in_flat) for every kernel offset: the output spatial positions
    (flattened y*OW+x) that read an in-bounds input position, and that position (y*W+x)."""
    H, W = w.in_hw
    OH, OW = w.out_hw
    for ky in range(w.kernel[0]):
        oy, iy = axis_taps(w, 0, ky)
        vy = (iy >= 0) & (iy < H)
        for kx in range(w.kernel[1]):
            ox, ix = axis_taps(w, 1, kx)
            vx = (ix >= 0) & (ix < W)
            out_flat = (oy[vy][:, None] * OW + ox[vx][None, :]).reshape(-1)
            in_flat = (iy[vy][:, None] * W + ix[vx][None, :]).reshape(-1)
            yield ky, kx, out_flat, in_flat
