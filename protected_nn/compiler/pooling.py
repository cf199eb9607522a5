"""A public average pool as a rotate-and-add sum (plan step `rotsum`), or fused into the next layer.

An average pool has no trained weight and equal weights per window, so it needs no product and
no level: y = sum over the window of rot(x, offset), a doubling tree of rotations when the
window is a power of two per axis (2x2: the x step A and the y step B, 2 rotations), and its
1/count goes into the next layer's encrypted weights (compiler/graph.py keeps such pools apart).
Where the window's elements sit decides what the sum leaves: on a grid the pooled values sit at
the anchors with partial sums in between; on a polyphase layout whose pooled phases are the top
bits of the block index (tensor_map.polyphase_map order ("top", k)), with the tree's shifts
slots/k^2 apart, EVERY block gets the full sum: k^2 clean copies, which the next layer may read
instead of the canonical one (more aligned channel pairs per product).

The output map is not assumed from the layout's name: the tree is simulated on the input map
(which logical values each slot holds after it) and a slot is a home of pooled value p only if it
holds exactly p's window, so any layout, padding or copy pattern is handled or refused. Fusing
(today's behaviour) stays whenever the cost model finds it cheaper; the choice is per pool.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from protected_nn.compiler.structure import chw
from protected_nn.compiler.tensor_map import Grid, TensorMap, grid_map, polyphase_map

_RNG = np.random.default_rng(20261201)


def _tree(node, tm: TensorMap, slots: int) -> list[int] | None:
    """Doubling shifts summing each window, read off the window with most elements."""
    geo = node.geometries[0] if node.geometries else None
    if geo is None:
        return None
    kh, kw = geo.kernel
    if kh & (kh - 1) or kw & (kw - 1) or kh * kw < 2:
        return None
    S = node.weights[0].tocsr()
    r = int(np.argmax(np.diff(S.indptr)))
    cols = S.indices[S.indptr[r]:S.indptr[r + 1]]
    c_in, h_in, w_in = geo.in_chw
    ci, y, x = np.unravel_index(cols, (c_in, h_in, w_in))
    c0, y0, x0 = int(ci[0]), int(y.min()), int(x.min())
    idx = lambda yy, xx: (c0 * h_in + yy) * w_in + xx
    tree = []
    for k, (dy, dx) in ((kw, (0, 1)), (kh, (1, 0))):
        if k == 1:
            continue
        a, b = idx(y0, x0), idx(y0 + dy, x0 + dx)
        if tm.ct[a] != tm.ct[b]:
            return None
        step = int(tm.slot[b] - tm.slot[a]) % slots
        tree += [(step << e) % slots for e in range(int(k).bit_length() - 1)]
    return tree if all(tree) else None


def _contents(tm: TensorMap, slots: int) -> list[sp.csr_matrix]:
    """Per ciphertext, (slots x n+1) counts of the logical values each slot holds; column n is
    "garbage" (slots of a non-clean map that hold no copy)."""
    n = tm.n
    out = []
    for c in range(tm.n_cts):
        rows, cols = [], []
        for ct, slot in tm.all_copies():
            sel = ct == c
            rows.append(slot[sel])
            cols.append(np.nonzero(sel)[0])
        rows, cols = np.concatenate(rows), np.concatenate(cols)
        if not tm.clean:
            free = np.setdiff1d(np.arange(slots), rows)
            rows, cols = np.concatenate([rows, free]), np.concatenate([cols, np.full(free.size, n)])
        out.append(sp.csr_matrix((np.ones(rows.size, np.int64), (rows, cols)), shape=(slots, n + 1)))
    return out


def pooled_map(node, tm: TensorMap, slots: int):
    """(tree, output map) of the pool `node` run as a rotate-and-add tree on `tm`, or None."""
    tree = _tree(node, tm, slots)
    if tree is None:
        return None
    S = sp.csr_matrix(node.weights[0], dtype=np.int64)
    n_out, n_in = S.shape
    keys = _RNG.integers(-2 ** 62, 2 ** 62, size=(n_in + 1, 2), dtype=np.int64)
    keys[n_in] = _RNG.integers(-2 ** 62, 2 ** 62, size=2, dtype=np.int64)
    want = {tuple(h): p for p, h in enumerate(S @ keys[:n_in])}
    homes: list[list[tuple[int, int]]] = [[] for _ in range(n_out)]
    clean = True
    for c, M in enumerate(_contents(tm, slots)):
        for shift in tree:
            M = M + M[(np.arange(slots) + shift) % slots]
        hashes = M @ keys
        filled = np.diff(M.indptr) > 0
        for s in np.nonzero(filled)[0]:
            p = want.get(tuple(hashes[s]))
            if p is None:
                clean = False
            else:
                homes[p].append((c, int(s)))
    if any(not h for h in homes):
        return None
    for h in homes:
        h.sort()
    n_copies = max(len(h) for h in homes)
    arr = [np.array([h[min(m, len(h) - 1)] for h in homes], np.int64) for m in range(n_copies)]
    out = TensorMap(tm.n_cts, arr[0][:, 0], arr[0][:, 1], [(a[:, 0], a[:, 1]) for a in arr[1:]])
    out.clean = clean
    _name_layout(out, node, tm, slots)
    return tree, out


def _name_layout(out: TensorMap, node, tm: TensorMap, slots: int) -> None:
    """Set the grid / polyphase description when the canonical homes are exactly one (the next
    convolution's output candidates are generated from it)."""
    geo = node.geometries[0]
    out_chw = tuple(chw((1, *geo.out_chw)))
    same = lambda ref: ref is not None and np.array_equal(ref.ct, out.ct) and np.array_equal(ref.slot, out.slot)
    if tm.poly is not None:
        _, factor, row = tm.poly
        sy = geo.stride[0]
        if factor % sy == 0:
            for order in orders(factor // sy):
                ref = polyphase_map(out_chw, factor // sy, row, order, slots)
                if same(ref):
                    out.poly, out.grid = ref.poly, ref.grid
                    return
    g = tm.grid
    if g is not None:
        c = out_chw[0]
        hw = out_chw[1] * out_chw[2]
        ref_grid = Grid(out_chw, g.row * geo.stride[0], g.col * geo.stride[1], g.unit_row,
                        tuple(int(out.ct[ch * hw]) for ch in range(c)),
                        tuple(int(out.slot[ch * hw]) for ch in range(c)))
        if same(grid_map(ref_grid, out.n_cts)):
            out.grid = ref_grid


def orders(factor: int) -> list:
    """Block orders of a polyphase layout with `factor` (tensor_map.polyphase_map)."""
    out = ["ch", "ph"] if factor > 1 else ["ch"]
    k = 2
    while k <= factor:
        out.append(("top", k))
        k *= 2
    return out


def rotsum_cost(tree, n_cts: int, level: int, cost) -> float:
    return len(tree) * n_cts * cost.rot(level)


def rotsum_step(node, tree, level: int, layer_stats: list, in_map: TensorMap) -> dict:
    """The plan step of a pool summed by `tree` (and its row in the plan report)."""
    layer_stats.append({"layer": node.name, "op": "pool (rotate-and-add)", "level": level + 1,
                        "products": 0, "rotations": len(tree) * in_map.n_cts, "relins": 0,
                        "in_cts": [in_map.n_cts], "out_cts": in_map.n_cts, "sources": node.sources,
                        "shape": [node.size, node.weights[0].shape[1]]})
    return {"op": "rotsum", "src": node.inputs[0], "out": node.name, "level": level,
            "tree": [int(t) for t in tree]}
