"""The encrypted parameters as one blob: magic, count, then length-prefixed ciphertexts.
Parsed with bounds checks (the bundle's hash and signature are checked before this runs)."""
from __future__ import annotations

import struct

from protected_nn.errors import BundleError

MAGIC = b"FHEP1"


def pack(blobs: list[bytes]) -> bytes:
    parts = [MAGIC, struct.pack(">I", len(blobs))]
    for b in blobs:
        parts += [struct.pack(">I", len(b)), b]
    return b"".join(parts)


def unpack(data: bytes, expected: int) -> list[memoryview]:
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 4:
        raise BundleError("encrypted parameters: bad header")
    (count,) = struct.unpack_from(">I", data, len(MAGIC))
    if count != expected:
        raise BundleError(f"encrypted parameters: {count} ciphertexts, the plan needs {expected}")
    off = len(MAGIC) + 4
    view = memoryview(data)      # slices without copies: a bundle's parameters can be a gigabyte
    out = []
    for i in range(count):
        if off + 4 > len(data):
            raise BundleError(f"encrypted parameters: truncated at ciphertext {i}")
        (n,) = struct.unpack_from(">I", data, off)
        off += 4
        if off + n > len(data):
            raise BundleError(f"encrypted parameters: ciphertext {i} declares {n} bytes, "
                              f"{len(data) - off} left")
        out.append(view[off:off + n])
        off += n
    if off != len(data):
        raise BundleError("encrypted parameters: trailing bytes")
    return out
