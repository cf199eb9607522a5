"""Result authentication, envelope version 3: a key agreed once per (gateway, model key), then one
AES-GCM tag per message instead of one Ed25519 signature.

Why: on the backend an Ed25519 verification of a 64 KB result costs about a tenth of decrypting it
(bench/bench_backend.py: SHA-512 of the bytes alone is ~4%), so per-message signatures cannot meet a
1% budget; a GMAC tag over the same bytes costs ~0.2%. The signature is kept where it matters -
binding a gateway's agreement key to its id, checked once and cached.

Keys (nothing new to provision, no new secret on a gateway):
- the model's *result key*: an X25519 key derived (HKDF-SHA256) from the model's secret CKKS key
  bytes as the owner store holds them. Every backend replica that can decrypt a model can therefore
  verify its results; its public half travels in the signed bundle manifest (`result_key`). A bundle
  without it (older exports) makes the gateway sign version 2 envelopes, still accepted.
- the gateway's *agreement key*: an X25519 key derived (HKDF) from its Ed25519 signing key. Its public
  half and an Ed25519 signature over (context, gateway id, agreement key) - the *certificate* - travel
  in every envelope; the backend checks a certificate once with the key in checks.gateway_keys.
- MAC key = HKDF(X25519(gateway, model), info = context | gateway id | both public keys | key
  fingerprint): another gateway cannot compute it (it lacks this gateway's private key), nor can
  anyone holding a bundle (it lacks the model's secret key).

Auth block (AUTH_LEN bytes after the payload): agreement public key (32) | certificate signature
(64) | nonce (12) | tag (16). The tag authenticates every byte of the envelope before it (one
contiguous span, so the backend checks it without copying 64 KB; the domain separation that a
context prefix would give is in the MAC key's derivation). Nonces are random: 96 bits keep the chance of a repeat below
2^-33 for 2^32 messages under one (gateway key, model key) pair - ~136 years at one result per
second per camera for ten cameras; every new model key version starts a new MAC key.
"""
from __future__ import annotations

import base64
import binascii
import os
from collections import OrderedDict

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from protected_nn.errors import EnvelopeError

PUBLIC_PREFIX = "x25519:"
PUB_LEN, CERT_SIG_LEN, NONCE_LEN, TAG_LEN = 32, 64, 12, 16
AUTH_LEN = PUB_LEN + CERT_SIG_LEN + NONCE_LEN + TAG_LEN
CERT_CONTEXT = b"fhe-edge gateway agreement key v1\x00"
_RESULT_KEY_SALT = b"fhe-edge result key v1"
_GATEWAY_KEY_SALT = b"fhe-edge gateway agreement key v1"
_MAC_KEY_INFO = b"fhe-edge inference result, envelope v3, mac key\x00"


def _raw(key) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _hkdf(secret: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(secret)


# ---------------------------------------------------------------- keys
def model_result_key(secret_key: bytes, key_fingerprint: str) -> X25519PrivateKey:
    """The model's result key, derived from its secret key bytes (owner side only)."""
    if not secret_key:
        raise ValueError("no secret key to derive the result key from")
    return X25519PrivateKey.from_private_bytes(
        _hkdf(bytes(secret_key), _RESULT_KEY_SALT, key_fingerprint.encode("ascii")))


def public_text(key: X25519PrivateKey | X25519PublicKey) -> str:
    """'x25519:<base64 of the 32 raw bytes>' - as written into the bundle manifest."""
    if isinstance(key, X25519PrivateKey):
        key = key.public_key()
    return PUBLIC_PREFIX + base64.b64encode(_raw(key)).decode("ascii")


def parse_public(text: str) -> X25519PublicKey:
    if not isinstance(text, str) or not text.startswith(PUBLIC_PREFIX):
        raise ValueError(f"expected '{PUBLIC_PREFIX}<base64>', got {str(text)[:40]!r}")
    try:
        raw = base64.b64decode(text[len(PUBLIC_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the result key after 'x25519:' is not valid base64") from None
    if len(raw) != PUB_LEN:
        raise ValueError(f"an X25519 public key is {PUB_LEN} bytes, this one is {len(raw)}")
    return X25519PublicKey.from_public_bytes(raw)


def gateway_agreement_key(signing_key: Ed25519PrivateKey) -> X25519PrivateKey:
    seed = signing_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                     serialization.NoEncryption())
    return X25519PrivateKey.from_private_bytes(_hkdf(seed, _GATEWAY_KEY_SALT, b""))


def _cert_message(gateway_id: str, agreement_pub: bytes) -> bytes:
    return CERT_CONTEXT + gateway_id.encode("ascii") + b"\x00" + agreement_pub


def _mac_key(shared: bytes, gateway_id: str, gateway_pub: bytes, model_pub: bytes, fingerprint: str) -> AESGCM:
    info = _MAC_KEY_INFO + gateway_id.encode("ascii") + b"\x00" + gateway_pub + model_pub + fingerprint.encode("ascii")
    return AESGCM(_hkdf(shared, b"", info))


# ---------------------------------------------------------------- gateway side
class ResultSealer:
    """What a gateway signs result envelopes with when its bundle carries a result key."""

    def __init__(self, signing_key: Ed25519PrivateKey, gateway_id: str, result_key: str, key_fingerprint: str):
        own = gateway_agreement_key(signing_key)
        self.public = _raw(own.public_key())
        self.certificate = self.public + signing_key.sign(_cert_message(gateway_id, self.public))
        model_pub = parse_public(result_key)
        self._aead = _mac_key(own.exchange(model_pub), gateway_id, self.public, _raw(model_pub), key_fingerprint)
        self.gateway_id, self.key_fingerprint = gateway_id, key_fingerprint

    def seal(self, signed: bytes) -> bytes:
        """The auth block for `signed` (every envelope byte before it)."""
        nonce = os.urandom(NONCE_LEN)
        head = self.certificate + nonce
        return head + self._aead.encrypt(nonce, b"", signed + head)


class SealerCache:
    """One sealer per (model key, result key): a gateway derives its MAC key once per bundle."""

    def __init__(self, signing_key: Ed25519PrivateKey, gateway_id: str):
        self.signing_key, self.gateway_id = signing_key, gateway_id
        self._sealers: dict[tuple[str, str], ResultSealer] = {}

    def signer(self, key_fingerprint: str, result_key: str | None):
        """A ResultSealer (envelope v3) when the bundle has a result key, else the Ed25519 key (v2)."""
        if not result_key:
            return self.signing_key
        k = (key_fingerprint, result_key)
        if k not in self._sealers:
            self._sealers[k] = ResultSealer(self.signing_key, self.gateway_id, result_key, key_fingerprint)
        return self._sealers[k]


# ---------------------------------------------------------------- backend side
class ResultVerifier:
    """Checks v3 auth blocks. `result_key(model_id, fingerprint)` returns the model's result key
    (X25519PrivateKey) or None. Certificates and MAC keys are cached (bounded, LRU), so a steady
    stream costs one AES-GCM tag check per message; a cache miss costs one Ed25519 verification."""

    def __init__(self, result_key, max_entries: int = 4096):
        self._result_key = result_key
        self._model_keys: dict[tuple[str, str], X25519PrivateKey | None] = {}
        self._macs: OrderedDict[tuple, tuple[Ed25519PublicKey, AESGCM]] = OrderedDict()
        self.max_entries = max_entries

    def _model_key(self, model_id: str, fingerprint: str) -> X25519PrivateKey | None:
        k = (model_id, fingerprint)
        if k not in self._model_keys:
            key = self._result_key(model_id, fingerprint)
            if key is None:
                return None        # not cached: the model may be added to the store later
            self._model_keys[k] = key
        return self._model_keys[k]

    def _aead(self, gateway_key: Ed25519PublicKey, gateway_id: str, model_id: str, fingerprint: str,
              certificate: bytes) -> AESGCM:
        k = (gateway_id, model_id, fingerprint, certificate)
        hit = self._macs.get(k)
        if hit is not None and hit[0] is gateway_key:   # verified with this very key (reloads make new ones)
            self._macs.move_to_end(k)
            return hit[1]
        model_key = self._model_key(model_id, fingerprint)
        if model_key is None:
            raise EnvelopeError("unknown_key", f"model {model_id} key {fingerprint} has no result key here")
        pub, sig = certificate[:PUB_LEN], certificate[PUB_LEN:]
        try:
            gateway_key.verify(sig, _cert_message(gateway_id, pub))
        except InvalidSignature:
            raise EnvelopeError("bad_signature", f"the agreement key in the envelope is not signed by gateway "
                                                 f"{gateway_id}'s key (forged or another gateway's)") from None
        try:     # a low-order point gives an all-zero secret, which the library refuses
            shared = model_key.exchange(X25519PublicKey.from_public_bytes(pub))
        except ValueError:
            raise EnvelopeError("bad_signature", f"gateway {gateway_id}'s agreement key is degenerate") from None
        aead = _mac_key(shared, gateway_id, pub, _raw(model_key.public_key()), fingerprint)
        self._macs[k] = (gateway_key, aead)
        self._macs.move_to_end(k)
        if len(self._macs) > self.max_entries:
            self._macs.popitem(last=False)
        return aead

    def verify(self, data, env, gateway_key: Ed25519PublicKey) -> None:
        """EnvelopeError("unsigned" | "bad_signature" | "unknown_key") unless `env` (version 3,
        decoded from `data`) carries a valid auth block for its gateway and model key."""
        auth = env.signature
        if not auth:
            raise EnvelopeError("unsigned", f"envelope from {env.gateway_id} is not signed")
        certificate = auth[:PUB_LEN + CERT_SIG_LEN]
        nonce = auth[PUB_LEN + CERT_SIG_LEN:PUB_LEN + CERT_SIG_LEN + NONCE_LEN]
        tag = auth[PUB_LEN + CERT_SIG_LEN + NONCE_LEN:]
        aead = self._aead(gateway_key, env.gateway_id, env.model_id, env.key_fingerprint, certificate)
        try:
            aead.decrypt(nonce, tag, memoryview(data)[:len(data) - TAG_LEN])
        except InvalidTag:
            raise EnvelopeError("bad_signature", f"envelope tag does not verify for gateway {env.gateway_id} "
                                                 f"(forged or altered)") from None
