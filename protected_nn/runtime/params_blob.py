"""The encrypted parameters as one blob: magic, count, then length-prefixed ciphertexts.
Parsed with bounds checks (the bundle's hash and signature are checked before this runs).

The magic says how each ciphertext is stored: FHEP2, the compact encoding of SEAL's
uncompressed form (ckks/compact.py, written since it exists); FHEP1, SEAL's own serialization
(zstd), as bundles made before it carry - still read, as it costs nothing to keep."""
from __future__ import annotations

import struct

from protected_nn.ckks import compact
from protected_nn.errors import BundleError, ResultError

MAGIC_SEAL = b"FHEP1"
MAGIC_COMPACT = b"FHEP2"
MAGIC = MAGIC_COMPACT
KNOWN = (MAGIC_SEAL, MAGIC_COMPACT)


def pack(blobs: list[bytes]) -> bytes:
    """FHEP2 if every ciphertext is compact-encoded, FHEP1 if every one is SEAL's own bytes."""
    if all(bytes(b[:len(compact.MAGIC)]) == compact.MAGIC for b in blobs):
        magic = MAGIC_COMPACT
    elif not any(bytes(b[:len(compact.MAGIC)]) == compact.MAGIC for b in blobs):
        magic = MAGIC_SEAL
    else:
        raise ValueError("encrypted parameters mix compact and SEAL-serialized ciphertexts")
    parts = [magic, struct.pack(">I", len(blobs))]
    for b in blobs:
        parts += [struct.pack(">I", len(b)), b]
    return b"".join(parts)


def _magic(data) -> bytes:
    magic = bytes(data[:len(MAGIC)])
    if magic not in KNOWN:
        if magic.startswith(MAGIC[:4]):
            raise BundleError(f"bundle member params: encoding {magic.decode('ascii', 'replace')} is "
                              f"not known to this software (it reads {', '.join(m.decode() for m in KNOWN)}); "
                              f"update it or export the bundle again")
        raise BundleError("encrypted parameters: bad header")
    return magic


def spans(data, expected: int) -> list[tuple[int, int]]:
    """(offset, length) in `data` of each stored ciphertext (compact or SEAL bytes, `_magic`)."""
    _magic(data)
    if len(data) < len(MAGIC) + 4:
        raise BundleError("encrypted parameters: bad header")
    (count,) = struct.unpack_from(">I", data, len(MAGIC))
    if count != expected:
        raise BundleError(f"encrypted parameters: {count} ciphertexts, the plan needs {expected}")
    off = len(MAGIC) + 4
    out = []
    for i in range(count):
        if off + 4 > len(data):
            raise BundleError(f"encrypted parameters: truncated at ciphertext {i}")
        (n,) = struct.unpack_from(">I", data, off)
        off += 4
        if off + n > len(data):
            raise BundleError(f"encrypted parameters: ciphertext {i} declares {n} bytes, "
                              f"{len(data) - off} left")
        out.append((off, n))
        off += n
    if off != len(data):
        raise BundleError("encrypted parameters: trailing bytes")
    return out


def unpack(data: bytes, expected: int) -> list[memoryview]:
    """The stored ciphertexts, as they are in the blob: views, no copies (a bundle's parameters
    can be a gigabyte)."""
    view = memoryview(data)
    return [view[off:off + n] for off, n in spans(data, expected)]


def is_compact(data) -> bool:
    return _magic(data) == MAGIC_COMPACT


def load_weight(ckks, blob, i: int, compact_entry: bool):
    """Ciphertext `i` of the blob loaded into `ckks` (a ckks.context.Ckks). BundleError naming
    it if it does not decode or SEAL refuses it."""
    what = f"bundle member params, ciphertext {i}"
    raw = compact.decode(blob, what) if compact_entry else blob
    try:
        return ckks.ct_from_bytes(raw)
    except ResultError as exc:
        raise BundleError(f"{what}: {exc}") from None


def load_weights(ckks, data: bytes, expected: int) -> list:
    """The weight ciphertexts loaded into `ckks`, one at a time (only one decoded ciphertext is
    in memory besides the loaded ones)."""
    compact_entries = is_compact(data)
    return [load_weight(ckks, blob, i, compact_entries) for i, blob in enumerate(unpack(data, expected))]
