"""What a result ciphertext must look like before its decryption is believed (defence in depth
behind the gateways' signatures).

Anyone who knows the plan (ring size, primes, output layout) can build a TRANSPARENT ciphertext
(c1 = 0, c0 = the encoding of chosen values): it decrypts under any key to exactly those values.
Variants: c1 small (c0 + c1*s is then c0 plus noise far below the scale), scale +inf in SEAL's
header (every value decodes to 0), all-zero coefficients. So, from the plan alone:

- header: SEAL magic, uncompressed, two polynomials, the parms id of the result level (one prime,
  taken from a genuine encryption at that level), NTT form, correction factor 1 - and then the
  whole header byte for byte equal to that genuine encryption's (reserved bytes included);
- scale: exactly the plan's output scale (finite: the plan's bookkeeping is exact);
- not transparent: c1 has non-zero coefficients;
- not degenerate: c1 looks like a random ring element. A genuine c1 is uniform mod q, so its
  canonical embedding (what CKKS decoding computes) has RMS sqrt(N/2) * q/sqrt(12) / scale. A c1
  much smaller than that would let c0 carry chosen values: decoding c1 (decrypting (c1, 0)) below
  1/DEGENERATE_FACTOR of the expected RMS is refused. Whatever passes adds noise of RMS at least
  RMS_expected/DEGENERATE_FACTOR * |s(zeta)| (~sqrt(2N/3)) to the values: hundreds of times the
  output range, which the padding-slot and plausibility checks refuse.

Each failure is a ResultRejected with a `reason` the backend counts. This cannot stop a holder of
the PUBLIC key (a gateway) from encrypting chosen values: only signatures bind a result to its
gateway, and a gateway can always lie about its own cameras (docs/threat-model.md).
"""
from __future__ import annotations

import math
import struct

import numpy as np

from protected_nn.ckks.context import SEAL_CT_PREFIX
from protected_nn.errors import ResultError

REASONS = ("result_malformed", "result_level", "result_not_ntt", "result_scale", "result_transparent",
           "result_degenerate")
DEGENERATE_FACTOR = 256.0
_SEAL_MAGIC = 0xA15E
# SEAL 4.1 Ciphertext::save: SEALHeader (magic, header size, version, compression, size: 16) | parms_id (32) | is_ntt_form (u8) | size (u64)
# | poly_modulus_degree (u64) | coeff_modulus_size (u64) | scale (f64) | correction_factor (u64)
# | DynArray: SEALHeader (16) | count (u64) | coefficients
_HEADER = struct.Struct("<HBBBBHQ")
_MEMBERS = struct.Struct("<32s?QQQdQ")
_ARRAY_COUNT = struct.Struct("<Q")


class ResultRejected(ResultError):
    """A result refused by these checks; `reason` is one of REASONS."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):   # crosses the decryption pool's process boundary intact
        return type(self), (self.reason, str(self))


class ResultChecks:
    def __init__(self, plan, sk):
        """`plan`: a runtime.plan_sections.PlanDoc."""
        self.sk = sk
        self.n = plan.ckks.n
        self.scale = float(plan.output.scale)
        self.q = plan.ckks.first_prime
        depth = plan.ckks.depth                           # the result is mod-switched to one prime
        reference = sk.encrypt(np.zeros(sk.slots), self.scale, depth).to_bytes("none")
        self.parms_id = _MEMBERS.unpack_from(reference, _HEADER.size)[0]
        self.header = reference[:SEAL_CT_PREFIX]    # every genuine result's header, byte for byte
        self.words = 2 * self.n
        self.size = SEAL_CT_PREFIX + 8 * self.words
        expected_rms = math.sqrt(self.n / 2) * (self.q / math.sqrt(12)) / self.scale
        self.min_c1_rms = expected_rms / DEGENERATE_FACTOR

    def check_header(self, raw: bytes) -> None:
        """Before SEAL parses anything: layout, level, NTT form, scale, transparency."""
        if len(raw) != self.size:
            raise ResultRejected("result_level", f"result holds {(len(raw) - SEAL_CT_PREFIX) // 8} coefficients, "
                                                 f"a result at the output level holds {self.words}")
        magic, _header_size, _major, _minor, compr, _reserved, total = _HEADER.unpack_from(raw, 0)
        if magic != _SEAL_MAGIC or compr != 0 or total != len(raw):
            raise ResultRejected("result_malformed", "result header is not an uncompressed SEAL ciphertext")
        parms_id, ntt, size, degree, k, scale, correction = _MEMBERS.unpack_from(raw, _HEADER.size)
        if size != 2 or degree != self.n or correction != 1:
            raise ResultRejected("result_malformed", f"result has {size} polynomials of degree {degree} "
                                                     f"(correction {correction}); expected 2 of degree {self.n}")
        if parms_id != self.parms_id or k != 1:
            raise ResultRejected("result_level", f"result is not at the plan's output level ({k} primes)")
        if not ntt:
            raise ResultRejected("result_not_ntt", "result is not in NTT form (no genuine CKKS result is)")
        if not math.isfinite(scale) or scale != self.scale:
            raise ResultRejected("result_scale", f"result scale {scale!r} is not the plan's output scale {self.scale!r}")
        (count,) = _ARRAY_COUNT.unpack_from(raw, SEAL_CT_PREFIX - _ARRAY_COUNT.size)
        if count != self.words:
            raise ResultRejected("result_malformed", f"result declares {count} coefficients, holds {self.words}")
        if raw[:SEAL_CT_PREFIX] != self.header:
            # what the field checks above let through: reserved bytes, a boolean encoded as 2..255
            raise ResultRejected("result_malformed", "result header differs from a genuine result's "
                                                     "(reserved or flag bytes altered)")
        if not np.frombuffer(raw, "<u8", count=self.n, offset=SEAL_CT_PREFIX + 8 * self.n).any():
            raise ResultRejected("result_transparent", "result is transparent (c1 = 0): it decrypts to "
                                                       "whatever its sender chose, under any key")

    def check_c1(self, raw: bytes) -> None:
        """c1 must look random: decrypt (c1, 0), i.e. decode c1 itself, and compare its magnitude."""
        half = SEAL_CT_PREFIX + 8 * self.n
        probe = raw[:SEAL_CT_PREFIX] + raw[half:] + bytes(8 * self.n)
        values = self.sk.decrypt(self.sk.ct_from_bytes(probe))
        rms = float(np.sqrt(np.mean(np.square(values)))) if np.all(np.isfinite(values)) else 0.0
        if rms < self.min_c1_rms:
            raise ResultRejected("result_degenerate", f"result's c1 is degenerate (decodes to RMS {rms:.3g}, a "
                                                      f"genuine one to about {self.min_c1_rms * DEGENERATE_FACTOR:.3g}): "
                                                      "c0 would carry chosen values")
