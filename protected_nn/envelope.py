"""The inference message, edge -> backend: one versioned, signed binary envelope around the ciphertext.

Layout of versions 2 and 3 (big-endian):
    b"FHEE" | u8 version | str model_id | str key_fingerprint | str gateway_id | str camera_id
    | u8 signature_length | u64 sequence | f64 capture_time | u32 payload_length
    | payload | signature
where str = u8 length (1..64) + ASCII [A-Za-z0-9._-]. Nothing may follow the signature. Its length
is 0 (unsigned, version 2 only) or, in version 2, 64 (Ed25519), in version 3, result_auth.AUTH_LEN (an agreement key
certificate and an AES-GCM tag: protected_nn/result_auth.py, ~50x cheaper to check per message).

In version 2 the signature is the gateway's Ed25519 signature (protected_nn/gateway_key.py) over SIGNING_CONTEXT
followed by every byte before the signature (magic to the end of the payload): header and payload
are bound together, so no field can be changed, and no payload moved to another header, without the
gateway's private key. An unsigned envelope (length 0) is what `edge-agent infer` writes without a
key; the backend service refuses it (reason "unsigned"). Version 1 (no signature) is refused.

The decoder is written for hostile input (anything a network peer sends): every declared length is
checked against the bytes actually present before it is used, every number against its range, and
every failure is an EnvelopeError with a short `reason` that services use as a metrics label.
"""
from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protected_nn.errors import EnvelopeError
from protected_nn.result_auth import AUTH_LEN, ResultSealer

MAGIC = b"FHEE"
VERSION = 2                 # what an Ed25519 key (or no key) writes
AUTH_VERSION = 3            # what a result_auth.ResultSealer writes
# unsigned is always version 2: a version 3 envelope without its auth block is malformed
_SIGNATURE_LENGTHS = {VERSION: (0, 64), AUTH_VERSION: (AUTH_LEN,)}
DEFAULT_MAX_SIZE = 1 << 20
MAX_FIELD_LEN = 64
SIGNATURE_LEN = 64
# SQLite stores integers as signed 64-bit: a larger sequence could not even be remembered as seen.
MAX_SEQUENCE = (1 << 63) - 1
SIGNING_CONTEXT = b"fhe-edge inference result, envelope v2\x00"   # domain separation
_FIELD_RE = re.compile(rb"[A-Za-z0-9._-]{1,64}\Z")
_TAIL = struct.Struct(">QdI")  # sequence, capture time, payload length
_STRING_FIELDS = ("model_id", "key_fingerprint", "gateway_id", "camera_id")


@dataclass(frozen=True)
class Envelope:
    model_id: str
    key_fingerprint: str
    gateway_id: str
    camera_id: str
    sequence: int
    capture_time: float
    payload: bytes
    version: int = VERSION
    signature: bytes = field(default=b"", compare=False)   # filled by decode(); encode() signs itself


def valid_field(value: str) -> bool:
    """True if `value` may be an id field (model, fingerprint, gateway, camera) of an envelope."""
    return isinstance(value, str) and value.isascii() and bool(_FIELD_RE.match(value.encode("ascii")))


def _check_numbers(sequence, capture_time) -> None:
    if not (isinstance(sequence, int) and 0 <= sequence <= MAX_SEQUENCE):
        raise EnvelopeError("out_of_range", f"envelope sequence {sequence!r} is outside 0..2^63-1")
    if not (isinstance(capture_time, (int, float)) and math.isfinite(capture_time)):
        raise EnvelopeError("bad_field", f"envelope capture_time {capture_time!r} is not a finite number")
    if capture_time < 0:
        raise EnvelopeError("out_of_range", f"envelope capture_time {capture_time!r} is before 1970")


def encode(env: Envelope, signing_key: Ed25519PrivateKey | ResultSealer | None = None) -> bytes:
    """Serialize and sign with `signing_key`: the gateway's Ed25519 key (version 2), a ResultSealer
    (version 3) or None (unsigned, refused by the backend service); `env.version` is ignored.
    Refuses (EnvelopeError) what decode would refuse, so a sender finds out at once instead of the
    backend counting rejects."""
    sealed = isinstance(signing_key, ResultSealer)
    if sealed and (signing_key.gateway_id, signing_key.key_fingerprint) != (env.gateway_id, env.key_fingerprint):
        raise EnvelopeError("bad_field", f"the result sealer is for {signing_key.gateway_id}/"
                                         f"{signing_key.key_fingerprint}, not {env.gateway_id}/{env.key_fingerprint}")
    version = AUTH_VERSION if sealed else VERSION
    parts = [MAGIC, bytes([version])]
    for name in _STRING_FIELDS:
        value = getattr(env, name)
        if not valid_field(value):
            raise EnvelopeError("bad_field", f"envelope field {name}={value!r}: expected 1..64 chars of [A-Za-z0-9._-]")
        raw = value.encode("ascii")
        parts += [bytes([len(raw)]), raw]
    _check_numbers(env.sequence, env.capture_time)
    payload = bytes(env.payload)
    if len(payload) >= 1 << 32:
        raise EnvelopeError("too_large", f"payload of {len(payload)} bytes does not fit a u32 length")
    sig_len = 0 if signing_key is None else AUTH_LEN if sealed else SIGNATURE_LEN
    parts += [bytes([sig_len]), _TAIL.pack(env.sequence, float(env.capture_time), len(payload)), payload]
    signed = b"".join(parts)
    if signing_key is None:
        return signed
    if sealed:
        return signed + signing_key.seal(signed)
    return signed + signing_key.sign(SIGNING_CONTEXT + signed)


def decode(data: bytes, max_size: int = DEFAULT_MAX_SIZE) -> Envelope:
    """Parse one envelope (the signature is NOT checked here: see verify); EnvelopeError(reason)
    on anything malformed, never another exception."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise EnvelopeError("bad_field", f"envelope must be bytes, got {type(data).__name__}")
    data = memoryview(data)
    if len(data) > max_size:
        raise EnvelopeError("too_large", f"envelope of {len(data)} bytes exceeds the limit of {max_size}")
    if len(data) < len(MAGIC) + 1:
        if bytes(data) != MAGIC[:len(data)]:
            raise EnvelopeError("bad_magic", "not an fhe-edge envelope (bad magic)")
        raise EnvelopeError("truncated", f"envelope truncated: {len(data)} bytes")
    if bytes(data[:4]) != MAGIC:
        raise EnvelopeError("bad_magic", "not an fhe-edge envelope (bad magic)")
    version = data[4]
    if version not in _SIGNATURE_LENGTHS:
        hint = " (version 1 envelopes are unsigned: upgrade the gateway)" if version == 1 else ""
        raise EnvelopeError("bad_version", f"envelope version {version} is not supported "
                                           f"(only {VERSION} and {AUTH_VERSION}){hint}")
    pos = 5
    values = {}
    for name in _STRING_FIELDS:
        if pos >= len(data):
            raise EnvelopeError("truncated", f"envelope truncated before field {name}")
        n = data[pos]
        pos += 1
        if not 1 <= n <= MAX_FIELD_LEN:
            raise EnvelopeError("bad_field", f"envelope field {name} has length {n} (allowed 1..{MAX_FIELD_LEN})")
        if pos + n > len(data):
            raise EnvelopeError("truncated", f"envelope truncated inside field {name}")
        raw = bytes(data[pos:pos + n])
        pos += n
        if not _FIELD_RE.match(raw):
            raise EnvelopeError("bad_field", f"envelope field {name} holds characters outside [A-Za-z0-9._-]")
        values[name] = raw.decode("ascii")
    if pos >= len(data):
        raise EnvelopeError("truncated", "envelope truncated before the signature length")
    sig_len = data[pos]
    pos += 1
    allowed = _SIGNATURE_LENGTHS[version]
    if sig_len not in allowed:
        raise EnvelopeError("bad_field", f"envelope v{version} signature length {sig_len} "
                                         f"(allowed {' or '.join(map(str, allowed))})")
    if pos + _TAIL.size > len(data):
        raise EnvelopeError("truncated", "envelope truncated before sequence/capture time/payload length")
    sequence, capture_time, length = _TAIL.unpack_from(data, pos)
    pos += _TAIL.size
    _check_numbers(sequence, capture_time)
    remaining = len(data) - pos - sig_len
    # Compare the declared length with what is really there before slicing anything.
    if length > remaining:
        raise EnvelopeError("length_mismatch", f"envelope declares a {length}-byte payload and a {sig_len}-byte "
                                               f"signature but only {len(data) - pos} bytes follow")
    if length < remaining:
        raise EnvelopeError("trailing_bytes", f"{remaining - length} unexpected bytes after the envelope signature")
    end = pos + length
    return Envelope(payload=bytes(data[pos:end]), sequence=sequence, capture_time=capture_time,
                    version=version, signature=bytes(data[end:]), **values)


def verify(data: bytes, env: Envelope, public_key: Ed25519PublicKey) -> None:
    """Check `env` (version 2, decoded from `data`) carries a valid signature by `public_key` over
    its header and payload; EnvelopeError("unsigned" | "bad_signature") otherwise. Version 3 is
    checked by result_auth.ResultVerifier (it needs the model's result key)."""
    if env.version != VERSION:
        raise EnvelopeError("bad_version", f"envelope version {env.version} is not checked by an Ed25519 key")
    if not env.signature:
        raise EnvelopeError("unsigned", f"envelope from {env.gateway_id} is not signed")
    signed = memoryview(data)[:len(data) - len(env.signature)]
    try:
        public_key.verify(env.signature, SIGNING_CONTEXT + signed)
    except InvalidSignature:
        raise EnvelopeError("bad_signature", f"envelope signature does not verify with gateway "
                                             f"{env.gateway_id}'s public key (forged or altered)") from None
