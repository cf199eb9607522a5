"""The first layer when the gateway holds the frame in clear: it writes ANY output layout.

Product t of output ciphertext o multiplies an encrypted weight vector by a plaintext the gateway
gathers from the frame (im2col): at the work slot of output r it holds the pixel of r's t-th
weight. With a work-slot period P (see tensor_map.with_period) each output owns slots/P work
slots, so a row of n weights needs ceil(n / (slots/P)) products, and a log2(slots/P) fold sums
them into every copy. No rotation of the input, no relinearization; the layout is chosen for the
layer that reads it (polyphase for strided convolutions, see tensor_map.polyphase_map).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from protected_nn.compiler.layout import CostModel
from protected_nn.compiler.tensor_map import TensorMap, fold_tree


@dataclass
class GatherPacking:
    gather: np.ndarray              # (products, slots) frame index per slot, -1 where none
    weights: np.ndarray             # (products, slots) weight per slot
    outs: list[list[int]]           # per output ciphertext: its product rows
    biases: list[np.ndarray]        # per output ciphertext, at every copy
    tree: list[int]
    products: int


def products_needed(W: sp.csr_matrix, out_map: TensorMap, slots: int) -> int:
    per_row = np.diff(sp.csr_matrix(W).indptr)
    reps = slots // (out_map.period or slots)
    need = -(-per_row // reps)
    return int(sum(need[out_map.ct == o].max(initial=0) for o in range(out_map.n_cts)))


def gather_cost(W, out_map: TensorMap, slots: int, cost: CostModel) -> float:
    """Each product: one plaintext encoding (about a product's cost) and one product; then the fold."""
    n = products_needed(W, out_map, slots)
    tree = len(fold_tree(out_map.period, slots)) if out_map.period else 0
    return (n * (2 * cost.mul(0) + cost.step_penalty * 0.15) + out_map.n_cts * cost.relin(0) * 0.1
            + tree * out_map.n_cts * cost.rot(1))


def pack_gather(W: sp.csr_matrix, bias: np.ndarray, out_map: TensorMap, slots: int) -> GatherPacking:
    csr = sp.csr_matrix(W)
    csr.sort_indices()
    period = out_map.period or slots
    reps = slots // period
    rows = np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr))
    rank = np.arange(csr.nnz) - csr.indptr[rows]          # position of the entry in its row
    t_local, m = rank // reps, rank % reps
    o = out_map.ct[rows]
    n_per = [int(t_local[o == c].max(initial=-1)) + 1 for c in range(out_map.n_cts)]
    first = np.concatenate([[0], np.cumsum(n_per)]).astype(np.int64)
    pid = first[o] + t_local
    work = (out_map.slot[rows] + m * period) % slots
    total = int(first[-1])
    gather = np.full((total, slots), -1, dtype=np.int64)
    weights = np.zeros((total, slots))
    gather[pid, work] = csr.indices
    weights[pid, work] = csr.data
    biases = []
    for c in range(out_map.n_cts):
        vec = np.zeros(slots)
        sel = out_map.ct == c
        for shift in range(0, slots, period):
            vec[(out_map.slot[sel] + shift) % slots] = bias[sel]
        biases.append(vec)
    outs = [list(range(int(first[c]), int(first[c + 1]))) for c in range(out_map.n_cts)]
    return GatherPacking(gather, weights, outs, biases,
                         fold_tree(period, slots) if reps > 1 else [], total)


def gather_step(node, out_map: TensorMap, add_weight, t_scale: float, delta: float, slots: int):
    """(plan step, gather array, products, layer stats) of the first layer writing `out_map`:
    weights at scale t_scale / delta (the frame is encoded at delta), the result back at delta."""
    pack = pack_gather(node.weights[0], node.bias, out_map, slots)
    outs = []
    for o, rows in enumerate(pack.outs):
        widx = [add_weight(pack.weights[t], 0, t_scale / delta, node.name, "weight") for t in rows]
        outs.append({"rows": rows, "weights": widx,
                     "bias": add_weight(pack.biases[o], 1, delta, node.name, "bias")})
    step = {"op": "gather_linear", "out": node.name, "level": 0, "outs": outs,
            "tree": [int(t) for t in pack.tree], "rescale_last": False}
    stats = {"layer": node.name, "op": "conv (gathered frame)", "level": 1,
             "products": pack.products, "rotations": len(pack.tree) * out_map.n_cts, "relins": 0,
             "weight_cts": pack.products + out_map.n_cts, "in_cts": [pack.products],
             "out_cts": out_map.n_cts, "sources": node.sources,
             "shape": [node.size, node.weights[0].shape[1]]}
    return step, pack.gather, int(pack.products), stats
