"""Seeded serialization: the owner's half-size evaluation keys and weight ciphertexts.

A fresh SEAL key or symmetric-key ciphertext is a pair (b, a) with `a` uniformly random; SEAL can
store the 64-byte seed that generated `a` instead of `a` itself, and its ordinary load expands it
again. That halves the Galois keys (the bulk of a bundle), the relinearization key and every
encrypted weight. It needs the secret key, so only the owner makes these; a gateway loads them
with the usual from_bytes calls. Pyfhel 3.5.0 exposes none of it: scripts/build-pyfhel.sh builds it
with scripts/pyfhel/*.patch, which adds the calls checked for here.

Every function takes the owner's Pyfhel object (context, secret key). Each call makes *fresh*
keys / a fresh ciphertext: two calls give different bytes, both valid for the same secret key.
"""
from __future__ import annotations

from importlib import metadata

import numpy as np

from protected_nn.errors import KeyMaterialError, ProtectedNNError

COMPRESSION = "zstd"   # the seeded calls raise on an unknown name (plain Pyfhel means "none")
PATCHED_CALLS = ("to_bytes_public_key_seeded", "to_bytes_relin_key_seeded",
                 "to_bytes_rotate_key_seeded", "encrypt_symmetric_to_bytes", "has_rotate_key_step")


class SeededUnavailable(ProtectedNNError):
    """The installed Pyfhel lacks the project's seeded-serialization patch."""


def available(he) -> bool:
    return all(hasattr(he, name) for name in PATCHED_CALLS)


def require(he) -> None:
    if not available(he):
        try:
            version = metadata.version("pyfhel")
        except metadata.PackageNotFoundError:
            version = "unknown"
        raise SeededUnavailable(
            f"the installed Pyfhel ({version}) lacks the fhe-edge seeded-serialization patch "
            f"(needs {', '.join(PATCHED_CALLS)}); re-run scripts/setup.sh, which builds Pyfhel "
            f"3.5.0+fheedge.* from scripts/pyfhel/*.patch")


def _require_secret(he) -> None:
    require(he)
    if he.is_secret_key_empty():
        raise KeyMaterialError("seeded keys and ciphertexts are made from the secret key: none is loaded")


def seeded_public_key(he, compression: str = COMPRESSION) -> bytes:
    _require_secret(he)
    return he.to_bytes_public_key_seeded(compression)


def seeded_relin_key(he, compression: str = COMPRESSION) -> bytes:
    _require_secret(he)
    return he.to_bytes_relin_key_seeded(compression)


def seeded_galois_keys(he, steps, compression: str = COMPRESSION) -> bytes:
    """Galois keys for exactly `steps` (slot rotations, |step| < slots, none zero)."""
    _require_secret(he)
    steps = sorted({int(k) for k in steps})
    if not steps or 0 in steps:
        raise ValueError(f"seeded Galois keys need non-zero rotation steps, got {steps}")
    return he.to_bytes_rotate_key_seeded(steps, compression)


def encrypt_symmetric_seeded(he, values: np.ndarray, scale: float, level: int = 0,
                             compression: str = COMPRESSION) -> bytes:
    """`values` (one per slot) encoded at `scale`, brought down `level` primes as a plaintext and
    encrypted there with the secret key: the ciphertext is born at its level, so only the primes
    it keeps are stored, and seeded, only half of those."""
    _require_secret(he)
    vec = np.ascontiguousarray(values, dtype=np.float64)   # encodeFrac mis-reads strided arrays
    if vec.shape != (he.get_nSlots(),):
        raise ValueError(f"expected {he.get_nSlots()} slot values, got shape {vec.shape}")
    if level < 0:
        raise ValueError(f"level must be >= 0, got {level}")
    pt = he.encodeFrac(vec, scale=scale)
    for _ in range(level):
        he.mod_switch_to_next(pt)
    return he.encrypt_symmetric_to_bytes(pt, compression)


def missing_rotation_steps(he, steps) -> list[int] | None:
    """The steps among `steps` whose Galois key is not in `he`'s loaded key set. Asks SEAL's key
    set itself, so a bundle whose keys do not match its plan is caught at load time. Without the
    patch there is no way to ask: None (the caller's own bookkeeping must then do)."""
    if not hasattr(he, "has_rotate_key_step"):
        return None
    if he.is_rotate_key_empty():
        return sorted(int(k) for k in steps)
    return sorted(int(k) for k in steps if not he.has_rotate_key_step(int(k)))
