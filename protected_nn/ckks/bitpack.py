"""Fixed-width bit packing of 64-bit words: the one rule behind every compact ciphertext and key
encoding (results: ckks/context.py; bundle members: ckks/compact.py).

Word i of a run packed at `bits` bits occupies bits [i*bits, (i+1)*bits) of a little-endian
bit stream (bit j of the stream is bit j%8 of byte j//8), the last byte zero-padded: the same
bytes as numpy.packbits(..., bitorder="little") of the words' low `bits` bits, made without
ever expanding the words into one byte per bit (a gateway unpacks ~300 MB at load time).

Eight words take exactly `bits` bytes, so word 8g+r starts at byte g*bits + (r*bits)//8, bit
(r*bits)%8: eight strided (unaligned) 64-bit views, one per r, do the whole run in numpy.
"""
from __future__ import annotations

import numpy as np

MAX_BITS = 64


def packed_size(n_words: int, bits: int) -> int:
    return (n_words * bits + 7) // 8


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bit width {bits} outside 1..{MAX_BITS}")


def _lanes(buf: np.ndarray, groups: int, bits: int):
    """For r in 0..7: (64-bit view of the word holding lane r's first bit, bit shift, view of
    the byte after it). `buf` has `groups` rows of bits+8 bytes (8 spare: no read runs off)."""
    stride = bits + 8
    for r in range(8):
        start, shift = divmod(r * bits, 8)
        lo = np.ndarray((groups,), dtype="<u8", buffer=buf, offset=start, strides=(stride,))
        hi = buf[:, start + 8] if shift + bits > 64 else None
        yield r, lo, shift, hi


def pack(words: np.ndarray, bits: int) -> bytes:
    """The words' low `bits` bits, packed (see the module doc). ValueError if any word does not
    fit in `bits` bits: a packing that silently dropped a bit would corrupt the ciphertext."""
    _check_bits(bits)
    words = np.ascontiguousarray(words, dtype=np.uint64).reshape(-1)
    n = words.size
    if n and bits < 64 and int(words.max()) >> bits:
        raise ValueError(f"a word does not fit in {bits} bits")
    if n == 0:
        return b""
    groups = -(-n // 8)
    lanes = np.zeros(groups * 8, dtype=np.uint64)
    lanes[:n] = words
    lanes = lanes.reshape(groups, 8)
    buf = np.zeros((groups, bits + 8), dtype=np.uint8)
    for r, lo, shift, hi in _lanes(buf, groups, bits):
        lo |= lanes[:, r] << np.uint64(shift)
        if hi is not None:
            hi |= (lanes[:, r] >> np.uint64(64 - shift)).astype(np.uint8)
    return buf[:, :bits].tobytes()[:packed_size(n, bits)]


def unpack(data, bits: int, n_words: int) -> np.ndarray:
    """`n_words` words packed at `bits` bits (exactly packed_size(n_words, bits) bytes)."""
    out = np.empty(-(-n_words // 8) * 8, dtype=np.uint64)
    _unpack(data, bits, n_words, out)
    return out[:n_words]


def unpack_into(data, bits: int, out: np.ndarray) -> None:
    """As unpack, into `out` (a 64-bit array, possibly unaligned, of a multiple of 8 words):
    a gateway unpacks each run of coefficients straight to its place in SEAL's bytes."""
    if out.size % 8:
        raise ValueError(f"unpack_into needs a multiple of 8 words, got {out.size}")
    _unpack(data, bits, out.size, out)


def _unpack(data, bits: int, n_words: int, out: np.ndarray) -> None:
    _check_bits(bits)
    src = np.frombuffer(data, dtype=np.uint8)
    if src.size != packed_size(n_words, bits):
        raise ValueError(f"{src.size} bytes do not hold exactly {n_words} words of {bits} bits")
    if n_words == 0:
        return
    groups = -(-n_words // 8)
    # Reads only, so the groups need no spare bytes of their own (as pack's do): one copy of
    # the data with the last group completed and 9 zero bytes after it, so no read runs off.
    buf = np.zeros(groups * bits + 9, dtype=np.uint8)
    buf[:src.size] = src
    lanes = out.reshape(groups, 8)
    mask = np.uint64((1 << bits) - 1) if bits < 64 else None
    for r in range(8):
        start, shift = divmod(r * bits, 8)
        lane = lanes[:, r]
        lo = np.ndarray((groups,), dtype="<u8", buffer=buf, offset=start, strides=(bits,))
        np.right_shift(lo, np.uint64(shift), out=lane)
        if shift + bits > 64:
            hi = np.ndarray((groups,), dtype=np.uint8, buffer=buf, offset=start + 8, strides=(bits,))
            lane |= hi.astype(np.uint64) << np.uint64(64 - shift)
        if mask is not None:
            lane &= mask
