"""The encrypted weights of a bundle as SEAL ciphertexts, loaded without holding the parameter
blob while they are expanded.

A weight ciphertext in SEAL's memory is ~3x its seeded, zstd-compressed bytes (LeNet-5: 208 MB of
parameters become ~570 MB). Expanding them all from one blob in memory puts the blob and the
expanded weights at their sum. A source that can re-read part of a member (edge_agent's sealed
copy of the verified bundle: `read_span`) lets the blob go after its layout is read: each
ciphertext is then read alone (~1 MB) and expanded. A source held in memory anyway (a
ModelArtifacts) is parsed through zero-copy views of it."""
from __future__ import annotations

import numpy as np

from protected_nn.runtime import params_blob


def load_weights(ckks, source, count: int) -> list:
    """`count` weight ciphertexts of `source`'s `params` member (BundleError if it does not hold
    exactly that many)."""
    data = source.member("params")
    views = params_blob.unpack(data, count)
    read_span = getattr(source, "read_span", None)
    if read_span is None:
        return [ckks.ct_from_bytes(v) for v in views]
    spans = _spans(data, views)
    del views, data          # the blob's last references: freed here, before any expansion
    return [ckks.ct_from_bytes(read_span("params", offset, size)) for offset, size in spans]


def _spans(data: bytes, views: list[memoryview]) -> list[tuple[int, int]]:
    """(offset, length) in `data` of each view into it. Taken from the views' addresses so that
    the blob's format stays params_blob's alone."""
    base = np.frombuffer(data, np.uint8).ctypes.data
    spans = []
    for v in views:
        addr = np.frombuffer(v, np.uint8).ctypes.data if len(v) else base
        spans.append((addr - base, len(v)))
    return spans
