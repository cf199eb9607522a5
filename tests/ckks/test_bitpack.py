"""Fixed-width bit packing (ckks/bitpack.py): the same bytes as numpy.packbits of the low bits
(the result payload format depends on it), lossless, and a word that does not fit is refused."""
from __future__ import annotations

import numpy as np
import pytest

from protected_nn.ckks import bitpack


def _reference(words: np.ndarray, bits: int) -> bytes:
    bitmat = ((words[:, None] >> np.arange(bits, dtype=np.uint64)) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bitmat.reshape(-1), bitorder="little").tobytes()


def _words(rng, bits: int, n: int) -> np.ndarray:
    # the top bit set in every word: a width one bit short would lose it
    top = np.uint64(1) << np.uint64(bits - 1)
    low = rng.integers(0, 2 ** 63, n, dtype=np.uint64) & (top - np.uint64(1))
    return low | top


@pytest.mark.parametrize("bits", [1, 7, 17, 31, 36, 45, 53, 57, 58, 60, 61, 63, 64])
@pytest.mark.parametrize("n", [0, 1, 7, 8, 13, 1024])
def test_pack_is_packbits_and_unpack_inverts_it(bits, n):
    words = _words(np.random.default_rng(bits * 1000 + n), bits, n)
    packed = bitpack.pack(words, bits)
    assert len(packed) == bitpack.packed_size(n, bits) == (n * bits + 7) // 8
    assert packed == _reference(words, bits)
    assert np.array_equal(bitpack.unpack(packed, bits, n), words)


def test_a_word_wider_than_the_width_is_refused():
    words = np.array([1, 2 ** 36], dtype=np.uint64)
    bitpack.pack(words, 37)
    with pytest.raises(ValueError, match="does not fit in 36 bits"):
        bitpack.pack(words, 36)


def test_unpack_checks_the_length():
    packed = bitpack.pack(np.arange(16, dtype=np.uint64), 36)
    for bad in (packed[:-1], packed + b"\0"):
        with pytest.raises(ValueError, match="do not hold exactly 16 words"):
            bitpack.unpack(bad, 36, 16)
    with pytest.raises(ValueError, match="bit width"):
        bitpack.unpack(packed, 65, 16)
