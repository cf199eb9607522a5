"""The encrypted weights of a bundle as SEAL ciphertexts, loaded without holding the parameter
blob while they are expanded.

A weight ciphertext in SEAL's memory is ~3x its seeded, zstd-compressed bytes (LeNet-5: 208 MB of
parameters become ~570 MB). Expanding them all from one blob in memory puts the blob and the
expanded weights at their sum. A source that can re-read part of a member (edge_agent's sealed
copy of the verified bundle: `read_span`) lets the blob go after its layout is read: each
ciphertext is then read alone (~1 MB) and expanded. A source held in memory anyway (a
ModelArtifacts) is parsed through zero-copy views of it."""
from __future__ import annotations

from protected_nn.runtime import params_blob


def load_weights(ckks, source, count: int) -> list:
    """`count` weight ciphertexts of `source`'s `params` member (BundleError if it does not hold
    exactly that many)."""
    data = source.member("params")
    read_span = getattr(source, "read_span", None)
    if read_span is None:
        return params_blob.load_weights(ckks, data, count)
    spans, compact_entries = params_blob.spans(data, count), params_blob.is_compact(data)
    del data                 # the blob's last reference: freed here, before any expansion
    return [params_blob.load_weight(ckks, read_span("params", offset, size), i, compact_entries)
            for i, (offset, size) in enumerate(spans)]
