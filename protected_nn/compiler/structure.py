"""Recover a linear map's convolution structure from W alone, and close its sparsity pattern.

The IR gives every linear layer as a sparse W plus the (C, H, W) shapes of its input and output.
Any convolution (fused with BatchNorm, pooling, a residual join; grouped or depthwise), and any
dense layer (a "convolution" whose kernel covers the whole image, output 1x1), satisfies

    W[(co, y', x'), (ci, y, x)] != 0  only if  y = sy*y' + dy,  x = sx*x' + dx,
    (dy, dx) in a kernel box,  and ci in the group of co.

`geometry` finds the strides, box and group count; `close_pattern` fills every position of that
structure with an explicit entry (0.0 where W is zero), so a pruned model is packed exactly like
the dense one: the plan, rotation set and sizes reveal only the architecture (issue 15 item 5).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

MAX_CLOSURE_GROWTH = 64   # a map whose "structure" is this much denser than W is not a conv


def chw(shape) -> tuple[int, int, int]:
    """(C, H, W) of an ONNX shape with batch: (1,C,H,W) as is, (1,C,L) as (C,1,L), (1,n) as (n,1,1)."""
    dims = [int(d) for d in shape[1:]] if len(shape) > 1 else [int(shape[0])]
    if len(dims) == 3:
        return dims[0], dims[1], dims[2]
    if len(dims) == 2:
        return dims[0], 1, dims[1]
    if len(dims) == 1:
        return dims[0], 1, 1
    c = int(np.prod(dims[:-2]))
    return c, dims[-2], dims[-1]


@dataclass(frozen=True)
class Geometry:
    in_chw: tuple[int, int, int]
    out_chw: tuple[int, int, int]
    stride: tuple[int, int]          # sy, sx
    box: tuple[int, int, int, int]   # dy0, dy1, dx0, dx1 (inclusive): y = sy*y' + dy
    groups: int                      # channel groups (1 = full, C = depthwise)

    @property
    def kernel(self) -> tuple[int, int]:
        return self.box[1] - self.box[0] + 1, self.box[3] - self.box[2] + 1

    @property
    def is_dense(self) -> bool:
        """Output 1x1 per channel: a dense layer reading the whole image."""
        return self.out_chw[1] == 1 and self.out_chw[2] == 1


def _best_stride(pos_out: np.ndarray, pos_in: np.ndarray, n_out: int, n_in: int) -> tuple[int, int, int]:
    if n_out <= 1:
        return 1, int(pos_in.min()), int(pos_in.max())
    best = None
    for s in range(1, max(1, n_in) + 1):
        d = pos_in - s * pos_out
        lo, hi = int(d.min()), int(d.max())
        if best is None or hi - lo < best[2] - best[1]:
            best = (s, lo, hi)
        if s * (n_out - 1) > 2 * n_in:
            break
    return best


def geometry(W: sp.spmatrix, in_shape, out_shape) -> Geometry | None:
    in_chw, out_chw = chw(in_shape), chw(out_shape)
    coo = W.tocoo()
    if coo.nnz == 0 or W.shape != (int(np.prod(out_chw)), int(np.prod(in_chw))):
        return None
    co, yo, xo = np.unravel_index(coo.row, out_chw)
    ci, yi, xi = np.unravel_index(coo.col, in_chw)
    sy, dy0, dy1 = _best_stride(yo, yi, out_chw[1], in_chw[1])
    sx, dx0, dx1 = _best_stride(xo, xi, out_chw[2], in_chw[2])
    groups = 1
    c_out, c_in = out_chw[0], in_chw[0]
    for g in range(min(c_out, c_in), 1, -1):
        if c_out % g or c_in % g:
            continue
        if np.all(co // (c_out // g) == ci // (c_in // g)):
            groups = g
            break
    return Geometry(in_chw, out_chw, (sy, sx), (dy0, dy1, dx0, dx1), groups)


def closure_indices(geo: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of every entry the geometry allows, inside the input image."""
    (c_in, h_in, w_in), (c_out, h_out, w_out) = geo.in_chw, geo.out_chw
    sy, sx = geo.stride
    dy0, dy1, dx0, dx1 = geo.box
    per_out, per_in = c_out // geo.groups, c_in // geo.groups
    co = np.arange(c_out)
    ci_of = (co // per_out)[:, None] * per_in + np.arange(per_in)[None, :]      # (c_out, per_in)
    yo, xo = np.meshgrid(np.arange(h_out), np.arange(w_out), indexing="ij")
    rows, cols = [], []
    for dy in range(dy0, dy1 + 1):
        for dx in range(dx0, dx1 + 1):
            y, x = sy * yo + dy, sx * xo + dx
            ok = (y >= 0) & (y < h_in) & (x >= 0) & (x < w_in)
            if not ok.any():
                continue
            p_out = (yo * w_out + xo)[ok]
            p_in = (y * w_in + x)[ok]
            r = co[:, None, None] * (h_out * w_out) + p_out[None, None, :]
            c = ci_of[:, :, None] * (h_in * w_in) + p_in[None, None, :]
            r = np.broadcast_to(r, (c_out, per_in, p_out.size))
            rows.append(r.reshape(-1))
            cols.append(c.reshape(-1))
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(rows).astype(np.int64), np.concatenate(cols).astype(np.int64)


def close_pattern(W: sp.spmatrix, in_shape, out_shape) -> tuple[sp.csr_matrix, Geometry | None]:
    """W with an explicit entry (0.0 where W is zero) at every position of its structure.
    A map without convolution structure (a permutation, a gather) is returned as it is."""
    W = sp.csr_matrix(W)
    geo = geometry(W, in_shape, out_shape)
    if geo is None:
        return W, None
    rows, cols = closure_indices(geo)
    if rows.size > MAX_CLOSURE_GROWTH * max(1, W.nnz) + 4096:
        return W, None
    n_in = W.shape[1]
    key = rows * n_in + cols
    coo = W.tocoo()
    wkey = coo.row.astype(np.int64) * n_in + coo.col.astype(np.int64)
    order = np.argsort(wkey)
    wkey, wval = wkey[order], coo.data[order]
    pos = np.searchsorted(wkey, key)
    pos_c = np.minimum(pos, max(0, wkey.size - 1))
    hit = (pos < wkey.size) & (wkey[pos_c] == key)
    vals = np.where(hit, wval[pos_c], 0.0)
    if int(hit.sum()) != W.nnz:       # the structure must cover every non-zero, else not a conv
        return W, None
    out = sp.csr_matrix((vals, (rows, cols)), shape=W.shape)
    out.sort_indices()
    return out, geo
