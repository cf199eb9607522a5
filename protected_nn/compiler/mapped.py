"""Packing of y = sum_i W_i x_i + b when tensors span several ciphertexts (TensorMap).

Every entry W[r, j] becomes a term: output ciphertext o(r) gets rot(x ciphertext c(j), k) times a
weight ciphertext holding W[r, j] at the work slot w, with k = slot(j) - w. Terms with the same
(o, input ciphertext, k) share one product. The distinct k are split k = b + G (baby-step /
giant-step): each input ciphertext is rotated once per baby b (shared by all output
ciphertexts), products with the same G are summed without relinearization, relinearized once and
rotated once by G (weights pre-rotated by -G on the owner side, free).

Two ways to choose the work slots:
  * grid output (convolutions): w = the output's own slot. On grids k is the same for every
    output position of a channel pair and kernel offset, so products ~ base differences x taps.
  * residue output (dense layers): row r owns the slots w = r (mod P), P = next_pow2(rows); each
    entry takes k = (slot(j) - r) mod P, so products = P per input ciphertext whatever the input
    layout, then log2(slots/P) rotate-and-adds fold each residue class into slot r.
Explicit zeros in W are packed like any other weight (see structure.close_pattern).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from protected_nn.compiler.layout import CostModel, next_pow2
from protected_nn.compiler.linear import _baby_chains, pow2_steps
from protected_nn.compiler.tensor_map import TensorMap, fold_tree, phase_tree


@dataclass
class MappedPacking:
    sources: list[tuple[int, int]]            # (input, ciphertext) rotated
    babies: list[tuple[int, int, int, list[int]]]   # (source, rotation, built from, pow2 steps)
    outs: list[list[tuple[list[int], list[tuple[int, np.ndarray]]]]]  # per out ct: Horner giants
    tree: list[int]
    bias: list[np.ndarray]                     # per output ciphertext
    products: int
    rotations: int
    relins: int
    cost_ms: float
    steps: set[int] = field(default_factory=set)


def _phase_offset(r, j, out_map: TensorMap, in_map: TensorMap):
    """Work-slot offset of each entry on a phased output (see tensor_map.phase_grids)."""
    sy, sx, row_in, col_in = out_map.phases
    _, ho, wo = out_map.grid.chw
    _, hi, wi = in_map.grid.chw
    yo, xo = (r // wo) % ho, r % wo
    yi, xi = (j // wi) % hi, j % wi
    return ((yi - sy * yo) % sy) * row_in + ((xi - sx * xo) % sx) * col_in


def _terms_grid(weights, in_maps, out_map: TensorMap, slots):
    """(o, input, in ct, k) -> (work slots, values), choosing among input copies the one whose
    key is most common (replicated first-layer channels then meet every output block at k)."""
    keys, works, vals = [], [], []
    for i, (W, tm) in enumerate(zip(weights, in_maps)):
        coo = W.tocoo()
        r, j, v = coo.row.astype(np.int64), coo.col.astype(np.int64), coo.data
        o = out_map.ct[r]
        w = out_map.slot[r]
        if out_map.phases is not None:
            w = (w + _phase_offset(r, j, out_map, tm)) % slots
        cands = []
        for ct, slot in tm.all_copies():
            if out_map.period:   # any work slot w = home (mod period): the rotation k < period
                k = (slot[j] - w) % out_map.period
            else:
                k = (slot[j] - w) % slots
            cands.append(((o * (len(in_maps) + 1) + i) * (tm.n_cts + 1) + ct[j]) * slots + k)
        cands = np.stack(cands, axis=1)
        if cands.shape[1] > 1:
            uniq, inv, counts = np.unique(cands, return_inverse=True, return_counts=True)
            k = cands % slots
            near = np.minimum(k, slots - k)          # ties: the nearest copy (short rotation)
            score = counts[inv.reshape(cands.shape)].astype(np.int64) * (2 * slots) - near
            pick = np.argmax(score, axis=1)
            key = cands[np.arange(cands.shape[0]), pick]
        else:
            pick = np.zeros(cands.shape[0], np.int64)
            key = cands[:, 0]
        keys.append(key)
        if out_map.period:          # the work slot is wherever the rotated source lands
            src = np.stack([slot[j] for _, slot in tm.all_copies()], axis=1)
            w = (src[np.arange(src.shape[0]), pick] - key % slots) % slots
        works.append(w)
        vals.append(v)
    return keys, works, vals


def _terms_residue(weights, in_maps, period, slots):
    keys, works, vals = [], [], []
    for i, (W, tm) in enumerate(zip(weights, in_maps)):
        coo = W.tocoo()
        r, j, v = coo.row.astype(np.int64), coo.col.astype(np.int64), coo.data
        # every copy may serve: the one with the smallest rotation (compiler/replicate.py puts
        # copies in other residue classes; periodic copies all tie, and the canonical one wins)
        cts = np.stack([ct[j] for ct, _ in tm.all_copies()], axis=1)
        src = np.stack([slot[j] for _, slot in tm.all_copies()], axis=1)
        pick = np.argmin((src - r[:, None]) % period, axis=1)
        at = np.arange(j.size)
        ct_j, slot_j = cts[at, pick], src[at, pick]
        k = (slot_j - r) % period
        w = (slot_j - k) % slots
        keys.append(((0 * (len(in_maps) + 1) + i) * (tm.n_cts + 1) + ct_j) * slots + k)
        works.append(w)
        vals.append(v)
    return keys, works, vals


def _decode_key(key, n_inputs, n_cts, slots):
    k = key % slots
    rest = key // slots
    ct = rest % (n_cts + 1)
    rest //= n_cts + 1
    return int(rest // (n_inputs + 1)), int(rest % (n_inputs + 1)), int(ct), int(k)


def pack_mapped(weights: list[sp.csr_matrix], bias: np.ndarray, in_maps: list[TensorMap],
                out_map: TensorMap | None, slots: int, level: int, cost: CostModel,
                known_steps: set[int], residue_period: int = 0) -> MappedPacking:
    n_in = len(in_maps)
    max_cts = max(tm.n_cts for tm in in_maps)
    if out_map is not None:
        keys, works, vals = _terms_grid(weights, in_maps, out_map, slots)
        n_out = out_map.n_cts
    else:
        keys, works, vals = _terms_residue(weights, in_maps, residue_period, slots)
        n_out = 1
    key = np.concatenate(keys)
    work = np.concatenate(works)
    val = np.concatenate(vals)
    order = np.argsort(key, kind="stable")
    key, work, val = key[order], work[order], val[order]
    uniq, start = np.unique(key, return_index=True)
    bounds = list(start) + [key.size]
    terms = {}
    for n, u in enumerate(uniq):
        o, i, ct, k = _decode_key(int(u), n_in, max_cts, slots)
        terms[(o, i, ct, k)] = (work[bounds[n]:bounds[n + 1]], val[bounds[n]:bounds[n + 1]])
    beta = _best_beta(terms, slots, giant_weight=2)
    src_index: dict[tuple[int, int], int] = {}
    baby_keys: set[tuple[int, int]] = set()
    giants: list[dict[int, list]] = [dict() for _ in range(n_out)]
    for (o, i, ct, k), (w, v) in sorted(terms.items()):
        b = k % beta
        g = k - b
        s = src_index.setdefault((i, ct), len(src_index))
        baby_keys.add((s, b))
        vec = np.zeros(slots)
        np.add.at(vec, (w + g) % slots, v)
        giants[o].setdefault(g, []).append(((s, b), vec))
    babies = _baby_chains(sorted(baby_keys), slots)
    index = {(s, b): n for n, (s, b, _, _) in enumerate(babies)}
    outs = []
    for o in range(n_out):
        order_g = sorted(giants[o], reverse=True)
        horner = []
        for n, g in enumerate(order_g):
            nxt = order_g[n + 1] if n + 1 < len(order_g) else 0
            horner.append((pow2_steps(g - nxt, slots), [(index[kk], vec) for kk, vec in giants[o][g]]))
        outs.append(horner)
    if out_map is None:
        tree = [residue_period << e for e in range(int(math.log2(slots // residue_period)))]
    elif out_map.period:
        tree = fold_tree(out_map.period, slots)
    else:
        tree = phase_tree(out_map.phases) if out_map.phases is not None else []
    biases = []
    for o in range(n_out):
        vec = np.zeros(slots)
        if out_map is None:
            one = np.zeros(residue_period)
            one[:bias.size] = bias
            vec = np.tile(one, slots // residue_period)
        else:
            sel = out_map.ct == o
            for m in range(0, slots, out_map.period or slots):   # every copy the fold leaves
                vec[(out_map.slot[sel] + m) % slots] = bias[sel]
        biases.append(vec)
    sources = sorted(src_index, key=src_index.get)
    n_baby = sum(len(st) for (_, _, _, st) in babies)
    n_giant = sum(len(st) for h in outs for st, _ in h)
    relins = sum(len(h) for h in outs)
    products = len(terms)
    steps = ({st % slots for (_, _, _, sts) in babies for st in sts}
             | {st % slots for h in outs for sts, _ in h for st in sts} | set(tree)) - {0}
    known = {s % slots for s in known_steps}
    cost_ms = ((n_baby + n_giant) * cost.rot(level) + relins * cost.relin(level)
               + products * cost.mul(level) + len(tree) * n_out * cost.rot(level + 1)
               + len(steps - known) * cost.step_penalty + products * cost.step_penalty * 0.15)
    return MappedPacking(sources, babies, outs, tree, biases, products,
                         n_baby + n_giant + len(tree) * n_out, relins, cost_ms, steps)


def _best_beta(terms, slots, giant_weight: int = 1) -> int:
    """The baby/giant split with the fewest key switches. With `giant_weight` 2 a giant step also
    counts its relinearization (each giant's sum is relinearized before it is rotated)."""
    best_beta, best_rot = 1, None
    beta = 1
    while beta <= slots:
        babies = {(i, ct, k % beta) for (_, i, ct, k) in terms if k % beta}
        giants = {(o, k - k % beta) for (o, _, _, k) in terms if k - k % beta}
        n_rot = len(babies) + giant_weight * len(giants)
        if best_rot is None or n_rot < best_rot:
            best_beta, best_rot = beta, n_rot
        beta *= 2
    return best_beta


def residue_period_for(m: int, keep_zero: int, slots: int) -> int:
    return min(slots, next_pow2(m + keep_zero))
