"""Shifted copies of a clean input for a dense layer (residue packing, compiler/mapped.py).

A dense layer writing n outputs folds a period P >= n: row r works at the slots = r (mod P), and
an entry (r, j) needs the rotation k = slot(j) - r (mod P), so it pays one product per residue
class of k, P per input ciphertext, however few values the input holds. Copies of the input at
slots shifted by P/2, P/4, ... (mod P) let every entry pick the copy with k < P/2^e: P/2^e
products. A clean input (zero outside its copies) gets them by rotate-and-add (a `rotsum` step,
e rotations per ciphertext, no level) wherever the shifted copies land on free slots. The copies
a fold leaves are P-periodic, i.e. all in the same residue class: these are not.
"""
from __future__ import annotations

import numpy as np

from protected_nn.compiler.tensor_map import TensorMap

MAX_DOUBLINGS = 4


def _occupied(tm: TensorMap, slots: int) -> np.ndarray:
    occ = np.zeros((tm.n_cts, slots), bool)
    for ct, slot in tm.all_copies():
        occ[ct, slot] = True
    return occ


def replicas(tm: TensorMap, period: int, slots: int) -> list[tuple[list[int], TensorMap]]:
    """[(tree, map with the shifted copies)] for 1, 2, ... doublings while they fit."""
    if not tm.clean or tm.phases is not None or period < 2:
        return []
    occ = _occupied(tm, slots)
    copies = tm.all_copies()
    tree, out = [], []
    for e in range(MAX_DOUBLINGS):
        step = period >> (e + 1)
        if step < 1:
            break
        shift = None
        for t in range(slots // period):
            for s in ((step + t * period) % slots, (-step - t * period) % slots):
                if not np.any(occ & np.roll(occ, -s, axis=1)):
                    shift = s
                    break
            if shift is not None:
                break
        if shift is None:
            break
        occ = occ | np.roll(occ, -shift, axis=1)
        copies = copies + [(ct, (slot - shift) % slots) for ct, slot in copies]
        tree = tree + [int(shift)]
        rep = TensorMap(tm.n_cts, tm.ct, tm.slot, copies[1:], tm.grid, True, None, tm.poly, 0)
        out.append((list(tree), rep))
    return out
