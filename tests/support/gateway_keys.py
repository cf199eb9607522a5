"""Gateway signing keys for tests: deterministic per gateway id (so a test, the backend config it
writes and a subprocess gateway agree without passing keys around), never used outside tests."""
from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protected_nn import gateway_key

# Gateway ids the backend fixtures list a key for by default.
TEST_GATEWAYS = tuple(f"gw-{i}" for i in range(10)) + ("gw-new", "gw-x", "gw-test", "gw-pw", "gw-bad",
                                                       "gw-evil", "gw-other", "bench", "local")


def key_for(gateway_id: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"fhe-edge test gateway " + gateway_id.encode()).digest())


def public_keys(gateways=TEST_GATEWAYS) -> dict[str, str]:
    """checks.gateway_keys for the backend config."""
    return {g: gateway_key.public_key_text(key_for(g)) for g in gateways}


def write_key(path: Path, gateway_id: str) -> Path:
    """The gateway's private key file (mode 0600), for an edge config's signing_key_file."""
    gateway_key.write_private_key(key_for(gateway_id), path, overwrite=True)
    return path
