"""Envelope format: round trip, and hostile bytes only ever give EnvelopeError with a known reason."""
import struct

import pytest
from hypothesis import given, settings, strategies as st

from protected_nn.envelope import Envelope, EnvelopeError, decode, encode

REASONS = {"too_large", "bad_magic", "bad_version", "truncated", "bad_field", "length_mismatch",
           "trailing_bytes"}
ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-",
              min_size=1, max_size=64)
envelopes = st.builds(
    Envelope, model_id=ids, key_fingerprint=ids, gateway_id=ids, camera_id=ids,
    sequence=st.integers(0, 2**64 - 1),
    capture_time=st.floats(allow_nan=False, allow_infinity=False),
    payload=st.binary(max_size=2048))


def sample(payload=b"\x01\x02\x03" * 10) -> Envelope:
    return Envelope("crowd-v1", "0123456789abcdef", "gw-1", "cam.1", 7, 1700000000.25, payload)


@settings(max_examples=300, deadline=None)
@given(envelopes)
def test_round_trip(env):
    assert decode(encode(env)) == env


def test_layout_is_the_documented_one():
    data = encode(sample(b"xyz"))
    assert data[:5] == b"FHEE\x01"
    assert data[5] == len("crowd-v1") and data[6:14] == b"crowd-v1"
    assert data[-3:] == b"xyz"
    assert struct.unpack(">I", data[-7:-3]) == (3,)
    assert struct.unpack(">Q", data[-23:-15]) == (7,)


@settings(max_examples=800, deadline=None)
@given(st.one_of(st.binary(max_size=400),
                 st.binary(max_size=400).map(lambda b: b"FHEE\x01" + b),   # past the magic: the fields
                 st.binary(max_size=40).map(lambda b: b"FHEE\x01\x01a\x01b\x01c\x01d" + b)))  # the tail
def test_random_bytes_only_raise_envelope_error(data):
    try:
        decode(data)
    except EnvelopeError as e:
        assert e.reason in REASONS


@settings(max_examples=300, deadline=None)
@given(envelopes, st.data())
def test_every_truncation_is_refused(env, data):
    raw = encode(env)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(EnvelopeError) as e:
        decode(raw[:cut])
    assert e.value.reason in {"truncated", "length_mismatch", "bad_magic"}


@settings(max_examples=300, deadline=None)
@given(envelopes, st.data())
def test_bit_flips_are_refused_or_change_the_fields(env, data):
    raw = bytearray(encode(env))
    pos = data.draw(st.integers(0, len(raw) - 1))
    raw[pos] ^= 1 << data.draw(st.integers(0, 7))
    try:
        got = decode(bytes(raw))
    except EnvelopeError as e:
        assert e.reason in REASONS
    else:
        # A flip inside a string, the numbers or the payload may still parse: then the decoded
        # message must be exactly the flipped bytes (nothing normalised away), so it shows.
        assert encode(got) == bytes(raw)


def test_trailing_bytes_refused():
    with pytest.raises(EnvelopeError) as e:
        decode(encode(sample()) + b"\x00")
    assert e.value.reason == "trailing_bytes"


def test_declared_length_larger_than_data_is_not_trusted():
    raw = bytearray(encode(sample(b"")))
    raw[-4:] = struct.pack(">I", 0xFFFFFFFF)  # claims 4 GB: must be refused without allocating
    with pytest.raises(EnvelopeError) as e:
        decode(bytes(raw))
    assert e.value.reason == "length_mismatch"


def test_too_large_checked_first():
    with pytest.raises(EnvelopeError) as e:
        decode(encode(sample(b"a" * 2000)), max_size=1000)
    assert e.value.reason == "too_large"


@pytest.mark.parametrize("data,reason", [
    (b"XXXX\x01", "bad_magic"), (b"FHEE\x02" + b"\x00" * 40, "bad_version"), (b"FHE", "truncated"),
    (b"", "truncated"), (b"FHEE\x01\x00", "bad_field"), (b"FHEE\x01\x41", "bad_field"), (b"FHEE\x01\x05ab", "truncated"),
    (b"FHEE\x01\x02a/", "bad_field"), (b"FHEE\x01\x02ab", "truncated"),
])
def test_specific_reasons(data, reason):
    with pytest.raises(EnvelopeError) as e:
        decode(data)
    assert e.value.reason == reason


@pytest.mark.parametrize("field,value", [
    ("model_id", ""), ("gateway_id", "a" * 65), ("camera_id", "cam 1"), ("model_id", "é"),
    ("key_fingerprint", "../x"), ("sequence", -1), ("sequence", 2**64), ("capture_time", float("nan")),
])
def test_encode_refuses_what_decode_would(field, value):
    env = sample()
    kwargs = {**env.__dict__, field: value}
    with pytest.raises(EnvelopeError) as e:
        encode(Envelope(**kwargs))
    assert e.value.reason == "bad_field"


def test_non_finite_capture_time_in_message_refused():
    raw = bytearray(encode(sample(b"")))
    raw[-12:-4] = struct.pack(">d", float("inf"))
    with pytest.raises(EnvelopeError) as e:
        decode(bytes(raw))
    assert e.value.reason == "bad_field"
