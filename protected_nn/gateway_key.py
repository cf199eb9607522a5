"""A gateway's own Ed25519 key pair: it signs every result envelope (protected_nn/envelope.py), the
backend verifies with the public key listed for that gateway id (checks.gateway_keys).

Private key: PEM (PKCS#8, unencrypted - the service must start unattended), mode 0600, made once
at install by `edge-agent keygen`; under systemd it reaches the service as a credential
(LoadCredential=), readable by the service's user only. Public key: one line, "ed25519:" + the 32
raw key bytes in base64, short enough to paste into the backend's YAML.
"""
from __future__ import annotations

import base64
import binascii
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protected_nn.errors import KeyMaterialError

PUBLIC_PREFIX = "ed25519:"


def generate() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public_key_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """'ed25519:<base64 of the 32 raw bytes>' - what the backend config lists for the gateway."""
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PUBLIC_PREFIX + base64.b64encode(raw).decode("ascii")


def parse_public_key(text: str) -> Ed25519PublicKey:
    """The inverse of public_key_text; ValueError with a clear message on anything else."""
    if not isinstance(text, str) or not text.startswith(PUBLIC_PREFIX):
        raise ValueError(f"expected '{PUBLIC_PREFIX}<base64>' (as printed by `edge-agent keygen`), got {str(text)[:40]!r}")
    try:
        raw = base64.b64decode(text[len(PUBLIC_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the public key after 'ed25519:' is not valid base64") from None
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes, this one is {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def write_private_key(key: Ed25519PrivateKey, path: str | os.PathLike, overwrite: bool = False) -> None:
    """Create `path` with mode 0600 from the start (never briefly readable by others)."""
    path = Path(path)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise KeyMaterialError(f"{path} already exists: a gateway keeps its key (give --force to replace it, "
                        "then update the backend's checks.gateway_keys)") from None
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(pem)


def load_private_key(path: str | os.PathLike) -> Ed25519PrivateKey:
    """Load the gateway's signing key; KeyMaterialError naming the file on any problem, including a file
    that others may read (a copied key lets anyone sign results as this gateway)."""
    path = Path(path)
    try:
        st = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise KeyMaterialError(f"gateway signing key {path}: cannot read: {exc.strerror or exc}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyMaterialError(f"gateway signing key {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}): "
                        f"chmod 600 it (and make a new key if it may have been copied)")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyMaterialError(f"gateway signing key {path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyMaterialError(f"gateway signing key {path} is not an Ed25519 key")
    return key
