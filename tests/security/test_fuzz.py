"""Property-based fuzzing (hypothesis) of the two parsers that take bytes from the network:
the envelope decoder and the result decoder `OwnerModel.decrypt`.

Property: whatever the bytes, the parser returns a well-formed value or raises a ProtectedNNError
subclass (EnvelopeError / ResultError) - never another exception, never a crash. The mutations are
structured (edits of real messages, crafted length and header fields), so they reach past the
first checks; tests/formats/test_envelope.py already covers plain random bytes, truncations and bit flips
of the envelope."""
from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from protected_nn import envelope
from protected_nn.ckks.context import PACKED_MAGIC, SEAL_CT_PREFIX
from protected_nn.errors import EnvelopeError, ProtectedNNError, ResultError
from protected_nn.gateway_key import generate

ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-", min_size=1, max_size=64)
envelopes = st.builds(envelope.Envelope, model_id=ids, key_fingerprint=ids, gateway_id=ids, camera_id=ids,
                      sequence=st.integers(0, envelope.MAX_SEQUENCE),
                      capture_time=st.floats(min_value=0, allow_nan=False, allow_infinity=False),
                      payload=st.binary(max_size=512))


@st.composite
def edited(draw, data_strategy):
    """A few random edits of real bytes: overwrite, insert, delete, duplicate a range, set a byte."""
    data = bytearray(draw(data_strategy))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["overwrite", "insert", "delete", "duplicate", "set"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[at:at + len(chunk)] = chunk
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 16))]
        elif op == "duplicate":
            data[at:at] = data[at:at + draw(st.integers(1, 32))]
        elif data:
            data[at] = draw(st.sampled_from([0, 1, 0x3F, 0x40, 0x41, 0x7F, 0x80, 0xFF]))
    return bytes(data)


def _assert_envelope_or_error(data: bytes, max_size: int = 1 << 16):
    try:
        env = envelope.decode(data, max_size=max_size)
    except EnvelopeError as exc:
        assert exc.reason in {"too_large", "bad_magic", "bad_version", "truncated", "bad_field", "out_of_range",
                              "length_mismatch", "trailing_bytes"}, exc.reason
        return None
    # Accepted: it must be exactly the canonical encoding of what was decoded (no slack anywhere).
    assert envelope.encode(env) == bytes(data)
    assert math.isfinite(env.capture_time) and all(envelope.valid_field(getattr(env, f)) for f in
                                                    ("model_id", "key_fingerprint", "gateway_id", "camera_id"))
    return env


@settings(max_examples=600, deadline=None)
@given(edited(envelopes.map(envelope.encode)))
def test_edited_envelopes_decode_canonically_or_raise_envelope_error(data):
    _assert_envelope_or_error(data)


KEY = generate()


@st.composite
def signed_and_edited(draw):
    original = envelope.encode(draw(envelopes), KEY)
    return original, draw(edited(st.just(original)))


@settings(max_examples=400, deadline=None)
@given(signed_and_edited())
def test_edited_signed_envelopes_never_verify(pair):
    """Issue 15: whatever a broker changes (header, payload, signature, lengths), the gateway's
    signature no longer verifies - or the bytes were not changed at all."""
    original, data = pair
    try:
        env = envelope.decode(data, max_size=1 << 20)
        envelope.verify(data, env, KEY.public_key())
    except EnvelopeError as exc:
        assert exc.reason in {"too_large", "bad_magic", "bad_version", "truncated", "bad_field", "out_of_range",
                              "length_mismatch", "trailing_bytes", "unsigned", "bad_signature"}, exc.reason
        return
    assert data == original


@settings(max_examples=500, deadline=None)
@given(envelopes, st.integers(0, 3), st.integers(0, 255), st.integers(0, 2**32 - 1))
def test_crafted_lengths_never_trusted(env, which_field, field_len, payload_len):
    """Every declared length (an id's u8, the payload's u32) set to anything: never read past the
    data, never allocate by a declared size, never accept."""
    data = bytearray(envelope.encode(env))
    pos = 5
    for _ in range(which_field):
        pos += 1 + data[pos]
    changed_field = data[pos] != field_len
    data[pos] = field_len
    tail = len(data) - len(env.payload) - 4      # unsigned: nothing follows the payload
    changed_payload = struct.unpack(">I", data[tail:tail + 4])[0] != payload_len
    data[tail:tail + 4] = struct.pack(">I", payload_len)
    got = _assert_envelope_or_error(bytes(data), max_size=1 << 20)
    if changed_payload and not changed_field:
        assert got is None


# ----------------------------------------------------------------------------- OwnerModel.decrypt
@pytest.fixture(scope="module")
def owner(tmp_path_factory):
    from protected_nn import api
    from tests.support.tiny_models import crowd_model
    path = tmp_path_factory.mktemp("fuzz") / "tiny.onnx"
    crowd_model(path)
    prot = api.protect(path)
    payload = api.EdgeModel(prot.artifacts).infer(np.array([[0.1, 0.1, 0, 0]], np.float32))
    other = api.protect(path)
    other_payload = api.EdgeModel(other.artifacts).infer(np.array([[0.1, 0.1, 0, 0]], np.float32))
    return Owner(api.OwnerModel(prot.artifacts, prot.secret_key), payload, other_payload)


class Owner(tuple):
    """(model, payload, other key's payload) with a short repr for hypothesis' failure reports."""

    def __new__(cls, *items):
        return super().__new__(cls, items)

    def __repr__(self) -> str:
        return f"Owner(payload {len(self[1])} B, other {len(self[2])} B)"


def _decrypt_or_result_error(model, data: bytes):
    try:
        y = model.decrypt(data)
    except ProtectedNNError as exc:
        assert isinstance(exc, ResultError), type(exc)
        return None
    assert isinstance(y, np.ndarray) and y.shape == model.output_shape and np.all(np.isfinite(y))
    return y


HEAD = len(PACKED_MAGIC) + 1 + SEAL_CT_PREFIX


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_edited_results_only_raise_result_error(owner, data):
    model, payload, other = owner
    base = data.draw(st.sampled_from(["ours", "other key's"]), label="base")
    base = payload if base == "ours" else other
    edit = data.draw(st.sampled_from(["edits", "header", "bits", "extend", "splice"]), label="how")
    if edit == "edits":
        blob = data.draw(edited(st.just(base)))
    elif edit == "header":       # the SEAL serialization header and the fields before the coefficients
        b = bytearray(base)
        for _ in range(data.draw(st.integers(1, 6))):
            b[data.draw(st.integers(0, HEAD - 1))] = data.draw(st.integers(0, 255))
        blob = bytes(b)
    elif edit == "bits":         # the declared coefficient width
        blob = base[:4] + bytes([data.draw(st.integers(0, 255))]) + base[5:]
    elif edit == "extend":
        blob = base + data.draw(st.binary(min_size=1, max_size=4096))
    else:                        # the first coefficients of one result, the rest from the other key's
        cut = data.draw(st.integers(HEAD + 1, min(len(payload), len(other)) - 1))
        blob = payload[:cut] + other[cut:]
    y = _decrypt_or_result_error(model, blob)
    if edit == "splice" and y is not None:
        pytest.fail("a result spliced from two keys' results decrypted")
    if edit == "header" and blob != base and y is not None:
        # issue 15: every field of the header is checked against the plan (scale +inf decoded to 0)
        pytest.fail("a result with an edited ciphertext header decrypted")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=4096),
                 st.binary(max_size=4096).map(lambda b: PACKED_MAGIC + b),
                 st.tuples(st.integers(17, 60), st.binary(min_size=SEAL_CT_PREFIX, max_size=SEAL_CT_PREFIX + 4096))
                 .map(lambda t: PACKED_MAGIC + bytes([t[0]]) + t[1])))
def test_arbitrary_bytes_only_raise_result_error(owner, blob):
    model, _, _ = owner
    assert _decrypt_or_result_error(model, blob) is None      # random bytes never decrypt


def test_result_decoder_refuses_non_bytes_and_huge(owner):
    model, payload, _ = owner
    for bad in (b"", bytearray(), payload + b"\0" * (4 << 20)):
        with pytest.raises(ResultError):
            model.decrypt(bad)
    assert _decrypt_or_result_error(model, payload) is not None     # the property test's baseline
