"""Owner side of the runtime: encrypt the trained parameters, decrypt and decode results.
Only the backend constructs these (they need the secret key)."""
from __future__ import annotations

import dataclasses

import numpy as np

from protected_nn.ckks import compact
from protected_nn.ckks.context import SecretCkks, normalize_step
from protected_nn.errors import ResultError
from protected_nn.runtime.plan_links import rotation_levels
from protected_nn.runtime.plan_sections import PlanDoc
from protected_nn.runtime.result_checks import ResultChecks

MAX_RESULT_BYTES = 4 << 20


def encrypt_weights(sk: SecretCkks, weights, seeded: bool = True) -> list[bytes]:
    """Each weight vector becomes a ciphertext at the level where the plan uses it (fewer
    primes: smaller bundle, cheaper products), seeded (symmetric-key, half the bytes) unless
    `seeded` is False, in the compact encoding (coefficients bit-packed, ckks/compact.py)."""
    return [sk.encrypt_to_compact(w.values, w.scale, w.level, seeded_ct=seeded) for w in weights]


def trim_key_rows(artifacts, plan: PlanDoc):
    """The artifacts with each Galois key stored only as wide as the plan rotates with it
    (compact.encode_kswitch_keys' `used`): a rotation at level L reads only the key rows of the
    primes left there, and runtime/plan_links.rotation_levels gives each step's lowest level
    from the plan alone (tests/engine/test_key_levels.py checks it against the evaluator). A key
    used at the top level stays whole, and so does the relinearization key (a black frame is
    encrypted, not encoded, and relinearized at the top level). A gateway refuses to apply a
    key above its width (Ckks.check_key_width) and gives back the memory of the rest."""
    params = plan.ckks.params
    full = len(params.qi_sizes) - 1
    used = {}
    for k, level in rotation_levels(plan).items():
        step = normalize_step(k, params.slots)
        if step and level > 0:
            used[compact.galois_index(step, params.n)] = full - level
    if not artifacts.rotation_keys or not used:
        return artifacts
    rows = compact.encode_kswitch_keys(compact.seal_bytes(artifacts.rotation_keys, "rotation_keys"),
                                       params.qi_sizes, used)
    return dataclasses.replace(artifacts, rotation_keys=rows)


class Decoder:
    def __init__(self, plan: PlanDoc, sk: SecretCkks):
        self.sk = sk
        out = plan.output
        self.shape = tuple(out.shape)
        self.slots = out.value_slots()
        # Unit-multiple slots that must decrypt to ~0: with another key they are random, large.
        self.zero_slots = out.padding_slots(sk.slots)[:64]
        # The first prime holds |value| < 2^(headroom - 1) at the result's scale; a result under
        # another key decrypts to values spread over that whole range, a genuine one to ~1e-4.
        headroom = plan.ckks.result_bits - np.log2(out.scale)
        self.zero_bound = max(0.05, 2.0 ** (headroom - 6))
        self.checks = ResultChecks(plan, sk)

    def decode(self, payload: bytes) -> np.ndarray:
        if not isinstance(payload, (bytes, bytearray)) or not payload:
            raise ResultError("empty result payload")
        if len(payload) > MAX_RESULT_BYTES:
            raise ResultError(f"result payload of {len(payload)} bytes exceeds {MAX_RESULT_BYTES}")
        raw = self.sk.unpack_result(bytes(payload), max_words=2 * 2 * self.sk.slots)
        self.checks.check_header(raw)          # level, NTT, scale, not transparent: before SEAL parses it
        ct = self.sk.ct_from_bytes(raw)
        try:
            values = self.sk.decrypt(ct)
        except Exception as exc:
            raise ResultError(f"cannot decrypt the result with this model's key: {exc}") from None
        self.checks.check_c1(raw)
        if not np.all(np.isfinite(values)):
            raise ResultError("the result does not decrypt to finite values")
        if self.zero_slots.size and np.max(np.abs(values[self.zero_slots])) > self.zero_bound:
            # Overflow looks the same as a wrong key: an input far outside the calibrated range
            # wraps the result modulo the last prime, and the padding slots fill with noise.
            raise ResultError("the result does not decrypt cleanly under this model's key (padding slots "
                              "are not zero): an input outside the calibrated range (overflow), "
                              "another model's or key's result, or altered")
        return values[self.slots].reshape(self.shape).astype(np.float32)
