"""The inference message, edge -> backend: one versioned binary envelope around the ciphertext.

Layout (big-endian):
    b"FHEE" | u8 version | str model_id | str key_fingerprint | str gateway_id | str camera_id
    | u64 sequence | f64 capture_time | u32 payload_length | payload
where str = u8 length (1..64) + ASCII [A-Za-z0-9._-]. Nothing may follow the payload.

The decoder is written for hostile input (anything a network peer sends): every declared length is
checked against the bytes actually present before it is used, and every failure is an
EnvelopeError with a short `reason` that services use as a metrics label.
"""
from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass

from protected_nn.errors import EnvelopeError

MAGIC = b"FHEE"
VERSION = 1
DEFAULT_MAX_SIZE = 1 << 20
MAX_FIELD_LEN = 64
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


def valid_field(value: str) -> bool:
    """True if `value` may be an id field (model, fingerprint, gateway, camera) of an envelope."""
    return isinstance(value, str) and value.isascii() and bool(_FIELD_RE.match(value.encode("ascii")))


def encode(env: Envelope) -> bytes:
    """Serialize; refuses (EnvelopeError "bad_field") what decode would refuse, so a sender finds
    out at once instead of the backend counting rejects."""
    if env.version != VERSION:
        raise EnvelopeError("bad_version", f"envelope version {env.version} is not supported (only {VERSION})")
    parts = [MAGIC, bytes([env.version])]
    for name in _STRING_FIELDS:
        value = getattr(env, name)
        if not valid_field(value):
            raise EnvelopeError("bad_field", f"envelope field {name}={value!r}: expected 1..64 chars of [A-Za-z0-9._-]")
        raw = value.encode("ascii")
        parts += [bytes([len(raw)]), raw]
    if not (isinstance(env.sequence, int) and 0 <= env.sequence < 1 << 64):
        raise EnvelopeError("bad_field", f"envelope sequence {env.sequence!r} is not a u64")
    if not (isinstance(env.capture_time, (int, float)) and math.isfinite(env.capture_time)):
        raise EnvelopeError("bad_field", f"envelope capture_time {env.capture_time!r} is not a finite number")
    payload = bytes(env.payload)
    if len(payload) >= 1 << 32:
        raise EnvelopeError("too_large", f"payload of {len(payload)} bytes does not fit a u32 length")
    parts += [_TAIL.pack(env.sequence, float(env.capture_time), len(payload)), payload]
    return b"".join(parts)


def decode(data: bytes, max_size: int = DEFAULT_MAX_SIZE) -> Envelope:
    """Parse one envelope; EnvelopeError(reason) on anything malformed, never another exception."""
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
    if version != VERSION:
        raise EnvelopeError("bad_version", f"envelope version {version} is not supported (only {VERSION})")
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
    if pos + _TAIL.size > len(data):
        raise EnvelopeError("truncated", "envelope truncated before sequence/capture time/payload length")
    sequence, capture_time, length = _TAIL.unpack_from(data, pos)
    pos += _TAIL.size
    if not math.isfinite(capture_time):
        raise EnvelopeError("bad_field", "envelope capture_time is not a finite number")
    remaining = len(data) - pos
    # Compare the declared length with what is really there before slicing anything.
    if length > remaining:
        raise EnvelopeError("length_mismatch", f"envelope declares a {length}-byte payload but only {remaining} bytes follow")
    if length < remaining:
        raise EnvelopeError("trailing_bytes", f"{remaining - length} unexpected bytes after the envelope payload")
    return Envelope(payload=bytes(data[pos:]), sequence=sequence, capture_time=capture_time,
                    version=version, **values)
