"""Where a flat tensor lives in the CKKS slots, and what operations cost.

Every encrypted tensor is *compact*: logical index j sits in slot j*unit, and the vector repeats
every `period` slots (period = slots when it is not replicated). Slots that are not multiples of
`unit` may hold garbage (partial sums of a reduction tree): nothing ever reads them, because
every rotation the plan makes is a multiple of the unit and every weight is zero there. With
`zero_padded`, the multiples of `unit` that hold no copy of the vector are exactly zero, so the
vector can be replicated into them by rotate-and-add.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Layout:
    n: int              # logical length
    unit: int           # slot stride between consecutive logical indices
    period: int         # replication period in slots (power of two, divides the slot count)
    zero_padded: bool   # unit-multiples outside the copies are exactly zero

    def slots_of(self) -> np.ndarray:
        """Canonical slot of each logical index."""
        return np.arange(self.n, dtype=np.int64) * self.unit

    @property
    def virtual_period(self) -> int:
        return self.period // self.unit

    def can_halve(self) -> bool:
        return self.zero_padded and self.n * self.unit <= self.period // 2

    def halved(self) -> "Layout":
        return Layout(self.n, self.unit, self.period // 2, True)

    def to_dict(self) -> dict:
        return {"n": self.n, "unit": self.unit, "period": self.period, "zero_padded": self.zero_padded}

    @classmethod
    def from_dict(cls, d: dict) -> "Layout":
        return cls(int(d["n"]), int(d["unit"]), int(d["period"]), bool(d["zero_padded"]))


def next_pow2(x: int) -> int:
    return 1 << max(0, int(x - 1).bit_length())


class CostModel:
    """Milliseconds of one operation on one core, by level, from measurements of SEAL CKKS at
    N=8192 with 7 primes (encrypt 12, rotate/relinearize 13 at the top, product 1.4); key
    switching shrinks roughly with the square of the primes left, products linearly.
    Only the *ratios* matter: they steer the packing choices. `step_penalty` charges a rotation
    step that needs a new Galois key (a few MB in the bundle)."""

    def __init__(self, n: int, depth: int):
        scale = (n / 8192) * 1.1
        self.n = n
        self.depth = depth
        self.enc_ms = 12.0 * scale
        self.ks_top = 13.0 * scale
        self.mul_top = 1.4 * scale
        self.step_penalty = 4.0 * scale

    def _left(self, level: int) -> float:
        return max(1, self.depth + 1 - level) / (self.depth + 1)

    def rot(self, level: int) -> float:
        f = self._left(level)
        return self.ks_top * f ** 1.6

    def relin(self, level: int) -> float:
        return self.rot(level)

    def mul(self, level: int) -> float:
        return self.mul_top * self._left(level)

    def encrypt(self) -> float:
        return self.enc_ms
