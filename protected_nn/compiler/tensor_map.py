"""Where a tensor spread over several ciphertexts lives: logical index -> (ciphertext, slot).

A spatial tensor (C, H, W) sits on a grid: channel c has a ciphertext ct[c] and a base slot
base[c], pixel (y, x) is at base[c] + y*row + x*col. A convolution with stride s reads its input
grid and writes an output grid with row*s, col*s - the output stays at its anchors, and the gaps
between anchors hold other output channels (multiplexed), so strided tensors stay dense and the
next layer reads them as they are. Because every channel shares row/col, a kernel offset is the
same rotation for every output position, and channel mixing is a few base differences.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from protected_nn.compiler.layout import next_pow2


@dataclass
class TensorMap:
    n_cts: int
    ct: np.ndarray                      # (n,) canonical ciphertext of each logical index
    slot: np.ndarray                    # (n,) canonical slot
    copies: list = field(default_factory=list)   # extra (ct, slot) arrays (free input replicas)
    grid: "Grid | None" = None
    clean: bool = True                  # slots holding no copy are ~0
    phases: tuple | None = None         # (sy, sx, row_in, col_in): strided conv work slots
    poly: tuple | None = None           # ((C, H, W), F, row): polyphase layout, see polyphase_map
    period: int = 0                     # work slots repeat every `period` (folded, then copies)

    @property
    def n(self) -> int:
        return int(self.ct.size)

    def all_copies(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(self.ct, self.slot)] + list(self.copies)

    def gather(self, slots: int) -> np.ndarray:
        """(n_cts, slots) logical index held by each slot, -1 where none (what the gateway encrypts)."""
        g = np.full((self.n_cts, slots), -1, dtype=np.int64)
        idx = np.arange(self.n, dtype=np.int64)
        for ct, slot in reversed(self.all_copies()):
            g[ct, slot] = idx
        return g

    def to_doc(self) -> dict:
        from protected_nn.runtime.plan_format import encode_array
        return {"n_cts": self.n_cts, "ct": encode_array(self.ct), "slot": encode_array(self.slot)}


@dataclass(frozen=True)
class Grid:
    chw: tuple[int, int, int]
    row: int                 # slots per y step
    col: int                 # slots per x step
    unit_row: int            # slots per row of the finest grid (what sub-offsets are built from)
    ct_of: tuple[int, ...]   # per channel
    base: tuple[int, ...]    # per channel


def grid_map(grid: Grid, n_cts: int, copies: list | None = None) -> TensorMap:
    c, h, w = grid.chw
    cc, yy, xx = np.meshgrid(np.arange(c), np.arange(h), np.arange(w), indexing="ij")
    ct = np.asarray(grid.ct_of)[cc].reshape(-1)
    slot = (np.asarray(grid.base)[cc] + yy * grid.row + xx * grid.col).reshape(-1)
    return TensorMap(n_cts, ct.astype(np.int64), slot.astype(np.int64), copies or [], grid)


def input_map(chw: tuple[int, int, int], slots: int) -> TensorMap | None:
    """The frame in channel blocks (row = next power of two of W, so a row step is one shared
    Galois key); spare blocks hold copies of the channels, which the gateway fills for free."""
    c, h, w = chw
    row = next_pow2(w)
    block = next_pow2(h * row)
    if block > slots:
        return None
    per_ct = slots // block
    n_cts = -(-c // per_ct)
    pos = np.arange(n_cts * per_ct)
    grid = Grid(chw, row, 1, row, tuple(int(p // per_ct) for p in pos[:c]),
                tuple(int(p % per_ct * block) for p in pos[:c]))
    tm = grid_map(grid, n_cts)
    for p in pos[c:]:                       # replica of channel p mod c at position p
        src = int(p % c)
        sel = slice(src * h * w, (src + 1) * h * w)
        ct = np.full(h * w, p // per_ct, dtype=np.int64)
        slot = tm.slot[sel] - grid.base[src] + (p % per_ct) * block
        full_ct, full_slot = tm.ct.copy(), tm.slot.copy()
        full_ct[sel], full_slot[sel] = ct, slot
        mask = np.zeros(tm.n, bool)
        mask[sel] = True
        tm.copies.append((np.where(mask, full_ct, tm.ct), np.where(mask, full_slot, tm.slot)))
    return tm


def conv_output_grids(in_grid: Grid, out_chw, stride, slots: int):
    """Candidate output grids of a convolution reading `in_grid` with `stride`: anchors at
    stride*input anchors; channels fill the sub-offsets between anchors (multiplexing) and
    power-of-two blocks. Yields (grid, n_cts) for several densities; the packer picks by cost."""
    c, h, w = out_chw
    row, col = in_grid.row * stride[0], in_grid.col * stride[1]
    unit = in_grid.unit_row
    subs_all = [a * unit + b for a in range(max(1, row // unit)) for b in range(col)
                if a * unit + b < row] if (row > unit or col > 1) else [0]
    pos = (np.arange(h)[:, None] * row + np.arange(w)[None, :] * col).reshape(-1)
    seen = set()
    n_sub = 1
    while n_sub <= len(subs_all):
        for subs in _sub_choices(subs_all, n_sub, unit):
            foot = int(max(subs) + pos.max() + 1)
            slots_used = np.add.outer(np.asarray(subs), pos).reshape(-1)
            if np.unique(slots_used).size != slots_used.size:
                continue
            block = next_pow2(foot)
            if block > slots:
                continue
            per_ct = slots // block
            cap = per_ct * len(subs)
            n_cts = -(-c // cap)
            for order in ("subs", "blocks"):
                ct_of, base = [], []
                for co in range(c):
                    k = co % cap
                    if order == "subs":
                        b, s = divmod(k, len(subs))
                    else:
                        s, b = divmod(k, per_ct)
                    ct_of.append(co // cap)
                    base.append(b * block + subs[s])
                key = (tuple(ct_of), tuple(base))
                if key in seen:
                    continue
                seen.add(key)
                yield Grid(tuple(out_chw), row, col, unit, tuple(ct_of), tuple(base)), n_cts
        n_sub *= 2


def phase_grids(in_grid: Grid, out_chw, stride, slots: int):
    """A strided convolution whose gaps hold partial sums instead of other channels: tap
    (dy, dx) accumulates at the anchor's sub-slot (dy mod sy, dx mod sx), so each product covers
    sy*sx taps' worth of rotations; a log2(sy*sx) rotate-and-add tree folds them into the anchor."""
    sy, sx = stride
    if (sy <= 1 and sx <= 1) or sy & (sy - 1) or sx & (sx - 1):
        return
    c, h, w = out_chw
    row, col = in_grid.row * sy, in_grid.col * sx
    pos = (np.arange(h)[:, None] * row + np.arange(w)[None, :] * col).reshape(-1)
    foot = int((sy - 1) * in_grid.row + (sx - 1) * in_grid.col + pos.max() + 1)
    block = next_pow2(foot)
    if block > slots:
        return
    per_ct = slots // block
    grid = Grid(tuple(out_chw), row, col, in_grid.unit_row, tuple(co // per_ct for co in range(c)),
                tuple(co % per_ct * block for co in range(c)))
    tm = grid_map(grid, -(-c // per_ct))
    tm.phases = (sy, sx, in_grid.row, in_grid.col)
    tm.clean = False
    yield tm


def phase_tree(phases) -> list[int]:
    sy, sx, row_in, col_in = phases
    return ([col_in << e for e in range(int(sx).bit_length() - 1)]
            + [row_in << e for e in range(int(sy).bit_length() - 1)])


def _sub_choices(subs_all, n, unit):
    """n sub-offsets: the first n (row-major), and a square-ish selection."""
    yield subs_all[:n]
    cols = sorted({s % unit for s in subs_all})
    rows = sorted({s // unit for s in subs_all})
    for nc in (1, 2, 4, 8, 16):
        nr = n // nc
        if nc <= len(cols) and 0 < nr <= len(rows) and nr * nc == n:
            pick = [r * unit + cc for r in rows[:nr] for cc in cols[:nc]]
            if pick != subs_all[:n]:
                yield pick


def compact_map(n: int, unit: int, slots: int) -> TensorMap:
    """A legacy single-ciphertext compact layout (index j at slot j*unit)."""
    return TensorMap(1, np.zeros(n, np.int64), np.arange(n, dtype=np.int64) * unit)


def polyphase_map(chw, factor: int, row: int, order: str, slots: int) -> TensorMap | None:
    """Space-to-depth: channel c, phase (y mod F, x mod F) is a block holding the phase image
    (y // F, x // F) on `row`. A convolution of stride s reading phases F writes phases F/s on the
    same row with the same rotation for every output position (a stride-s conv on F phases is a
    stride-1 conv on phase-channels), so strided outputs stay dense: no gaps, no anchors.
    `order` "ch" puts a channel's phases next to each other, "ph" a phase's channels, ("top", k)
    makes (y mod k, x mod k) the top bits of each ciphertext's block index: a k x k pool is then
    a rotate-and-add fold leaving k^2 clean copies (compiler/pooling.py)."""
    c, h, w = chw
    ph, pw = -(-h // factor), -(-w // factor)
    if row < pw:
        return None
    block = next_pow2((ph - 1) * row + pw)
    if block > slots:
        return None
    per_ct = slots // block
    cc, yy, xx = np.meshgrid(np.arange(c), np.arange(h), np.arange(w), indexing="ij")
    qy, qx = yy % factor, xx % factor
    if order == "ch":
        b = (cc * factor + qy) * factor + qx
    elif order == "ph":
        b = (qy * factor + qx) * c + cc
    else:
        k = int(order[1])
        group = per_ct // (k * k)
        if factor % k or group == 0:
            return None
        f2 = factor // k
        inner = ((qy // k) * f2 + qx // k) * c + cc          # the pooled phase's block
        b = (inner // group) * per_ct + ((qy % k) * k + qx % k) * group + inner % group
    b = b.reshape(-1).astype(np.int64)
    slot = (b % per_ct) * block + ((yy // factor) * row + xx // factor).reshape(-1)
    n_blocks = c * factor * factor
    grid = None
    if factor == 1:
        grid = Grid(tuple(chw), row, 1, row, tuple(int(k // per_ct) for k in range(c)),
                    tuple(int(k % per_ct * block) for k in range(c)))
    tm = TensorMap(-(-n_blocks // per_ct), b // per_ct, slot.astype(np.int64), [], grid)
    tm.poly = (tuple(int(v) for v in chw), int(factor), int(row))
    return tm


def with_period(tm: TensorMap, period: int, slots: int) -> TensorMap:
    """The same homes written through work slots repeating every `period` slots (a layer's
    products then cover slots/period times more weights each); the fold leaves every repeat
    holding the value, so the result carries clean copies the next layer may read instead."""
    out = TensorMap(tm.n_cts, tm.ct, tm.slot, [], tm.grid, True, None, tm.poly, int(period))
    out.copies = [(tm.ct, (tm.slot + m * period) % slots) for m in range(1, slots // period)]
    return out


def fold_tree(period: int, slots: int) -> list[int]:
    return [period << e for e in range(int(slots // period).bit_length() - 1)]


def period_variants(tm: TensorMap, slots: int, max_variants: int = 3) -> list[TensorMap]:
    """`tm` as it is and with the smallest few work-slot periods its homes fit in."""
    if tm.phases is not None or tm.copies:
        return [tm]
    p = next_pow2(int(tm.slot.max()) + 1)
    out = [tm]
    while p < slots and len(out) <= max_variants:
        out.append(with_period(tm, p, slots))
        p *= 2
    return out
