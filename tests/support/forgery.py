"""Forged results built WITHOUT the owner's secret key, from the plan alone (issue 15): what a
broker, a network attacker or a curious bystander can make. Used by the adversarial tests and
bench/bench_faults.py; each must be refused by the backend with its counted reason.

The attacker makes a fresh SEAL context from the plan's public parameters (ring size and prime
sizes: SEAL picks the primes deterministically) and its OWN key pair, only to obtain the layout
of a ciphertext header at the output level and the NTT encoding of chosen values.
"""
from __future__ import annotations

import struct

import numpy as np

from protected_nn.ckks.context import PACKED_MAGIC, SEAL_CT_PREFIX, Ckks
from protected_nn.ckks.params import CkksParams

_SCALE_AT = 16 + 32 + 1 + 8 + 8 + 8    # SEALHeader, parms_id, ntt flag, size, degree, primes


class Forger:
    def __init__(self, plan: dict):
        self.plan = plan
        self.params = CkksParams.from_dict(plan["ckks"])
        self.he = Ckks.new_context(self.params)
        self.he.keyGen()                                  # the attacker's own key, not the owner's
        self.n = self.params.n
        self.slots = self.n // 2
        self.scale = float(plan["output"]["scale"])
        self.depth = len(plan["ckks"]["qi_sizes"]) - 2
        self.bits = int(plan["ckks"]["qi_sizes"][0])
        ct = self.he.encryptFrac(np.zeros(self.slots), scale=self.scale)
        for _ in range(self.depth):
            self.he.mod_switch_to_next(ct)
        self.header = ct.to_bytes("none")[:SEAL_CT_PREFIX]

    def slot_values(self, outputs) -> np.ndarray:
        """Chosen output values placed where the plan's output layout reads them."""
        from protected_nn.compiler.layout import Layout
        lay = Layout.from_dict(self.plan["output"]["layout"])
        values = np.zeros(self.slots)
        values[lay.slots_of()] = np.asarray(outputs, dtype=np.float64).reshape(-1)
        return values

    def encoding(self, outputs) -> np.ndarray:
        """The NTT-form coefficients (one prime) of the chosen outputs at the output scale."""
        pt = self.he.encodeFrac(self.slot_values(outputs), scale=self.scale)
        for _ in range(self.depth):
            self.he.mod_switch_to_next(pt)
        raw = pt.to_bytes("none")
        return np.frombuffer(raw[len(raw) - 8 * self.n:], "<u8").copy()

    def pack(self, c0: np.ndarray, c1: np.ndarray, header: bytes | None = None) -> bytes:
        """The result payload format (protected_nn/ckks/context.py ct_to_packed_bytes)."""
        words = np.concatenate([c0, c1]).astype(np.uint64)
        bitmat = ((words[:, None] >> np.arange(self.bits, dtype=np.uint64)) & 1).astype(np.uint8)
        packed = np.packbits(bitmat.reshape(-1), bitorder="little").tobytes()
        return PACKED_MAGIC + bytes([self.bits]) + (header or self.header) + packed

    # -- the constructions of issue 15 ----------------------------------------------------------
    def transparent(self, outputs) -> bytes:
        """c1 = 0, c0 = the chosen values: decrypts to exactly them under ANY key."""
        return self.pack(self.encoding(outputs), np.zeros(self.n, np.uint64))

    def small_c1(self, outputs) -> bytes:
        """c1 = the constant polynomial 1 (all ones in NTT form): decrypts to the values + s."""
        return self.pack(self.encoding(outputs), np.ones(self.n, np.uint64))

    def all_zero(self) -> bytes:
        return self.pack(np.zeros(self.n, np.uint64), np.zeros(self.n, np.uint64))

    def scale_inf(self, rng: np.random.Generator) -> bytes:
        """Any coefficients with the header's scale set to +inf: decode to exact zeros."""
        q = int(self.plan["ckks"]["primes"][0])
        c = rng.integers(0, q, size=2 * self.n, dtype=np.uint64)
        header = self.header[:_SCALE_AT] + struct.pack("<d", float("inf")) + self.header[_SCALE_AT + 8:]
        return self.pack(c[:self.n], c[self.n:], header)

    def wrong_scale(self, outputs, factor: float = 2.0) -> bytes:
        """A transparent result whose header claims another scale (magnitude games)."""
        header = self.header[:_SCALE_AT] + struct.pack("<d", self.scale * factor) + self.header[_SCALE_AT + 8:]
        return self.pack(self.encoding(outputs), np.ones(self.n, np.uint64) * 7, header)

    def not_ntt(self, outputs) -> bytes:
        header = self.header[:48] + b"\x00" + self.header[49:]
        return self.pack(self.encoding(outputs), np.ones(self.n, np.uint64) * 3, header)

    def wrong_level(self, genuine_payload: bytes) -> bytes:
        """A real result's coefficients under a header naming another level of the chain."""
        top = self.he.encryptFrac(np.zeros(self.slots), scale=self.scale).to_bytes("none")
        head = len(PACKED_MAGIC) + 1
        header = genuine_payload[head:head + SEAL_CT_PREFIX]
        header = header[:16] + top[16:48] + header[48:]          # parms_id of the top level
        return genuine_payload[:head] + header + genuine_payload[head + SEAL_CT_PREFIX:]
