"""Packing of one (multi-input) linear map y = sum_i W_i x_i + b with ENCRYPTED weights.

Scheme (diagonals + baby-step/giant-step + a reduction tree, every weight a ciphertext):
  * Output row r gets a group of g work slots, r*g*t .. (r*g+g-1)*t (t = the widest input unit);
    a rotate-and-add tree of log2(g) rotations sums each group into its home slot r*g*t.
  * A product term multiplies a rotation rot(x_i, k) by a weight ciphertext that holds W_i[r, j]
    at the work slot which, after that rotation, sees x_i[j]. Choosing the work slot inside the
    group so that k falls on few values packs g products of a row into ONE ciphertext product:
    a dense m x n map costs about n*m*t/slots products instead of n.
  * The distinct rotations k are split k = b + G (baby b, giant G): inputs are rotated once per
    baby b, products with the same G are summed (size-3 ciphertexts, no relinearization),
    relinearized once, rotated once by G. The weights are pre-rotated by -G on the owner side,
    which is free because the owner lays them out in the clear before encrypting.
  * Replicating a small input (rotate-and-add into its zero padding) shrinks its period, hence
    the number of distinct rotations; `plan_linear` tries 0..r replications and all group sizes
    and keeps the cheapest plan under the cost model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from protected_nn.compiler.layout import CostModel, Layout, next_pow2

ZERO_HOMES = 6   # empty output slots kept for the owner's wrong-key check (runtime/owner.py)


@dataclass
class LinearPacking:
    g: int                                   # work slots per output row
    tree_unit: int                           # slot stride inside a group
    replications: list[int]                  # per input: how many times it is replicated first
    babies: list[tuple[int, int, int, list[int]]]  # (input, rotation, built from baby #, pow2 steps)
    giants: list[tuple[list[int], list[tuple[int, np.ndarray]]]]  # (steps after, [(baby #, weights)])
    tree: list[int]                          # rotate-and-add shifts
    bias: np.ndarray                         # slot vector added after the rescale
    out_layout: Layout
    cost_ms: float
    products: int
    rotations: int
    relins: int
    steps: set[int] = field(default_factory=set)


def _bsgs_split(ks: list[int], beta: int) -> tuple[set[int], set[int]]:
    babies = {k % beta for k in ks}
    giants = {k - k % beta for k in ks}
    return babies, giants


def plan_linear(weights: list[sp.csr_matrix], bias: np.ndarray, layouts: list[Layout], slots: int,
                level: int, cost: CostModel, known_steps: set[int], keep_zero_slots: bool = False
                ) -> LinearPacking:
    """`keep_zero_slots` (the model's output layer): leave at least ZERO_HOMES home slots empty.
    They decrypt to ~0 only under the right key (each passes by chance with probability ~2^-6
    under another key), which is how the owner tells a foreign or altered result from a genuine one."""
    m = weights[0].shape[0]
    best: LinearPacking | None = None
    max_rep = [0] * len(layouts)
    for i, lay in enumerate(layouts):
        cur = lay
        while cur.can_halve():
            cur = cur.halved()
            max_rep[i] += 1
    for rep in range(max(max_rep) + 1):
        reps = [min(rep, r) for r in max_rep]
        lays = [_replicated(lay, r) for lay, r in zip(layouts, reps)]
        t_unit = max(lay.unit for lay in lays)
        g = 1
        spare = ZERO_HOMES if keep_zero_slots else 0
        while (m + spare) * g * t_unit <= slots:
            cand = _pack(weights, bias, lays, reps, layouts, slots, g, t_unit, level, cost, known_steps)
            if best is None or cand.cost_ms < best.cost_ms:
                best = cand
            g *= 2
    if best is None:
        raise ValueError(f"a linear map with {m} outputs does not fit in {slots} slots")
    return best


def _replicated(lay: Layout, times: int) -> Layout:
    for _ in range(times):
        lay = lay.halved()
    return lay


def pow2_steps(d: int, slots: int) -> list[int]:
    """Rotation by d as a chain of power-of-two rotations: every layer then shares the same few
    Galois keys (each key is megabytes of bundle), at no extra rotations when d is a power of two."""
    d %= slots
    return [1 << e for e in range(d.bit_length()) if d >> e & 1]


def _baby_chains(keys: list[tuple[int, int]], slots: int) -> list[tuple[int, int, int, list[int]]]:
    """Each baby rotation rot(x_i, b) is built from the nearest already-built baby of the same
    input by power-of-two steps (one rotation when the babies are evenly spaced)."""
    out: list[tuple[int, int, int, list[int]]] = []
    built: dict[int, dict[int, int]] = {}
    for i, b in keys:
        have = built.setdefault(i, {})
        best_src, best_steps = -1, pow2_steps(b, slots)
        for e, idx in have.items():
            cand = pow2_steps(b - e, slots)
            if len(cand) < len(best_steps):
                best_src, best_steps = idx, cand
        have[b] = len(out)
        out.append((i, b, best_src, best_steps))
    return out


def replication_shifts(lay: Layout, times: int) -> list[int]:
    """Rotations for x += rot(x, period/2), repeated: the vector has period P with zeros in its
    upper half, so slot i+P/2 of the periodic vector is a copy of slot i: the copies land in the
    zero padding (and +P/2 is a power of two, a shared key)."""
    shifts = []
    for _ in range(times):
        shifts.append(lay.period // 2)
        lay = lay.halved()
    return shifts


def _pack(weights, bias, lays, reps, orig_layouts, slots, g, t_unit, level, cost, known_steps):
    m = weights[0].shape[0]
    terms: dict[tuple[int, int], tuple[list, list]] = {}   # (input, k) -> (work slots, values)
    for i, (W, lay) in enumerate(zip(weights, lays)):
        coo = W.tocoo()
        r, j, v = coo.row.astype(np.int64), coo.col.astype(np.int64), coo.data
        # explicit zeros (structure.close_pattern) are packed like any weight: no pruning mask shows
        rho = t_unit // lay.unit                 # input units per tree unit
        vp = lay.virtual_period
        rel = (j - r * g * rho) % vp             # where x_j sits relative to the group start
        tau = (rel // rho) % g
        kappa = (j - (r * g + tau) * rho) % vp   # rotation in input units, lands on few values
        work = (r * g + tau) * t_unit            # slot of the product
        k_real = kappa * lay.unit
        for kk in np.unique(k_real):
            sel = k_real == kk
            terms[(i, int(kk))] = (work[sel], v[sel])
    # choose the baby/giant split (beta) with the fewest rotations
    all_k = [k for (_, k) in terms]
    best_beta, best_rot = 1, None
    beta = t_unit
    while beta <= slots:
        bab_total = 0
        for i in range(len(lays)):
            ks = [k for (ii, k) in terms if ii == i]
            b, _ = _bsgs_split(ks, beta)
            bab_total += len(b - {0})
        _, gi = _bsgs_split(all_k, beta)
        n_rot = bab_total + len(gi - {0})
        if best_rot is None or n_rot < best_rot:
            best_beta, best_rot = beta, n_rot
        beta *= 2
    by_baby: dict[tuple[int, int], int] = {}
    giants: dict[int, list[tuple[tuple[int, int], np.ndarray]]] = {}
    for (i, k), (work, vals) in sorted(terms.items()):
        b = k % best_beta
        G = k - b
        vec = np.zeros(slots)
        vec[(work + G) % slots] = vals           # pre-rotated by -G: D'[p] = D[p - G]
        giants.setdefault(G, []).append(((i, b), vec))
        by_baby[(i, b)] = 0
    babies = _baby_chains(sorted(by_baby), slots)
    index = {(i, b): n for n, (i, b, _, _) in enumerate(babies)}
    horner = []                                  # giants high to low, acc rotated between them
    order = sorted(giants, reverse=True)
    for n, G in enumerate(order):
        nxt = order[n + 1] if n + 1 < len(order) else 0
        horner.append((pow2_steps(G - nxt, slots), [(index[key], vec) for key, vec in giants[G]]))
    tree = [t_unit * (1 << e) for e in range(int(math.log2(g)))]
    homes = np.arange(m, dtype=np.int64) * g * t_unit
    bias_vec = np.zeros(slots)
    bias_vec[homes] = bias
    out = Layout(n=m, unit=g * t_unit, period=slots, zero_padded=True)
    rep_steps = [s for lay, r in zip(orig_layouts, reps) for s in replication_shifts(lay, r)]
    chain_steps = [st for (_, _, _, sts) in babies for st in sts] + [st for sts, _ in horner for st in sts]
    steps = {s % slots for s in set(chain_steps) | set(tree) | set(rep_steps)} - {0}
    n_rep = len(rep_steps)
    n_baby = sum(len(sts) for (_, _, _, sts) in babies)
    n_giant = sum(len(sts) for sts, _ in horner)
    products = sum(len(v) for v in giants.values())
    known = {s % slots for s in known_steps}
    cost_ms = ((n_rep + n_baby + n_giant) * cost.rot(level) + len(giants) * cost.relin(level)
               + products * cost.mul(level) + len(tree) * cost.rot(level + 1)
               + len(steps - known) * cost.step_penalty + products * cost.step_penalty * 0.15)
    return LinearPacking(g=g, tree_unit=t_unit, replications=list(reps), babies=babies,
                         giants=horner, tree=tree, bias=bias_vec, out_layout=out,
                         cost_ms=cost_ms, products=products, rotations=n_rep + n_baby + n_giant + len(tree),
                         relins=len(giants), steps=steps)


def first_layer_free_layout(W: sp.csr_matrix, bias: np.ndarray, slots: int, cost: CostModel,
                            keep_zero_slots: bool = False):
    """The gateway lays the plaintext frame out itself, so the first linear map needs no input
    rotation at all: input ciphertext c holds, in the work slots of row r, the pixels that row's
    c-th batch of non-zero weights reads (im2col, replicated per output channel). Rows sit at
    slots r + t*(slots/g) (t < g); a tree over that subgroup sums them and leaves the output
    compact and replicated with period slots/g, ready for the next layer.
    Returns (cost_ms, gather maps (C, slots) of input indices or -1, weight vectors, tree, out layout)."""
    m = W.shape[0]
    best = None
    csr = W.tocsr()
    nnz_row = np.diff(csr.indptr)
    min_period = next_pow2(m + ZERO_HOMES if keep_zero_slots else m)
    g = 1
    while slots // g >= min_period:
        period = slots // g
        n_ct = max(1, int(math.ceil(nnz_row.max() / g)))
        tree = [period * (1 << e) for e in range(int(math.log2(g)))]
        c = n_ct * cost.encrypt() + n_ct * cost.mul(0) + cost.relin(0) + len(tree) * cost.rot(1) \
            + len(tree) * cost.step_penalty * 0.5 + n_ct * cost.step_penalty * 0.15
        if best is None or c < best[0]:
            best = (c, g, period, n_ct, tree)
        g *= 2
    c, g, period, n_ct, tree = best
    gather = np.full((n_ct, slots), -1, dtype=np.int64)
    wvecs = np.zeros((n_ct, slots))
    for r in range(m):
        cols = csr.indices[csr.indptr[r]:csr.indptr[r + 1]]
        vals = csr.data[csr.indptr[r]:csr.indptr[r + 1]]
        for idx, (col, val) in enumerate(zip(cols, vals)):
            ct, t = divmod(idx, g)
            slot = r + t * period
            gather[ct, slot] = col
            wvecs[ct, slot] = val
    one_period = np.zeros(period)
    one_period[:m] = bias
    bias_vec = np.tile(one_period, g)            # the output is replicated: so is its bias
    out = Layout(n=m, unit=1, period=period, zero_padded=True)
    return c, gather, wvecs, tree, bias_vec, out
