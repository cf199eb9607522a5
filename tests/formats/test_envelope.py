"""Envelope format: round trip, signatures bind header and payload, hostile bytes only ever give
EnvelopeError with a known reason."""
import struct

import pytest
from hypothesis import given, settings, strategies as st

from protected_nn.envelope import MAX_SEQUENCE, Envelope, EnvelopeError, decode, encode, verify
from protected_nn.gateway_key import generate

REASONS = {"too_large", "bad_magic", "bad_version", "truncated", "bad_field", "out_of_range", "length_mismatch",
           "trailing_bytes"}
KEY = generate()
OTHER_KEY = generate()
ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-",
              min_size=1, max_size=64)
envelopes = st.builds(
    Envelope, model_id=ids, key_fingerprint=ids, gateway_id=ids, camera_id=ids,
    sequence=st.integers(0, MAX_SEQUENCE),
    capture_time=st.floats(min_value=0, allow_nan=False, allow_infinity=False),
    payload=st.binary(max_size=2048))


def sample(payload=b"\x01\x02\x03" * 10, **over) -> Envelope:
    fields = dict(model_id="crowd-v1", key_fingerprint="0123456789abcdef", gateway_id="gw-1", camera_id="cam.1",
                  sequence=7, capture_time=1700000000.25, payload=payload)
    return Envelope(**{**fields, **over})


@settings(max_examples=300, deadline=None)
@given(envelopes, st.booleans())
def test_round_trip(env, signed):
    data = encode(env, KEY if signed else None)
    got = decode(data)
    assert got == env and bool(got.signature) == signed
    if signed:
        verify(data, got, KEY.public_key())


def test_layout_is_the_documented_one():
    data = encode(sample(b"xyz"), KEY)
    assert data[:5] == b"FHEE\x02"
    assert data[5] == len("crowd-v1") and data[6:14] == b"crowd-v1"
    sig, rest = data[-64:], data[:-64]
    assert rest[-3:] == b"xyz"
    assert struct.unpack(">I", rest[-7:-3]) == (3,)
    assert struct.unpack(">Q", rest[-23:-15]) == (7,)
    assert rest[-24] == 64                      # the signature length, before the numbers
    KEY.public_key().verify(sig, b"fhe-edge inference result, envelope v2\x00" + rest)
    unsigned = encode(sample(b"xyz"))
    assert unsigned[-24] == 0 and unsigned[-3:] == b"xyz"


def test_version_1_is_refused_with_a_hint():
    data = bytearray(encode(sample()))
    data[4] = 1
    with pytest.raises(EnvelopeError) as e:
        decode(bytes(data))
    assert e.value.reason == "bad_version" and "unsigned" in str(e.value)


def test_unsigned_and_wrong_key_are_refused_by_verify():
    data = encode(sample())
    with pytest.raises(EnvelopeError) as e:
        verify(data, decode(data), KEY.public_key())
    assert e.value.reason == "unsigned"
    data = encode(sample(), OTHER_KEY)
    with pytest.raises(EnvelopeError) as e:
        verify(data, decode(data), KEY.public_key())
    assert e.value.reason == "bad_signature"


@pytest.mark.parametrize("change", [dict(gateway_id="gw-2"), dict(camera_id="cam.2"), dict(sequence=8),
                                    dict(capture_time=1700000001.0), dict(model_id="other"),
                                    dict(key_fingerprint="ffff"), dict(payload=b"\x00" * 30)])
def test_relabelled_or_spliced_envelopes_fail_verification(change):
    """A broker keeps a real signature but changes a header field or swaps the payload."""
    real = encode(sample(), KEY)
    sig = decode(real).signature
    forged = encode(sample(**change), OTHER_KEY)[:-64] + sig     # the new header, the real signature
    env = decode(forged)
    assert env.signature == sig
    with pytest.raises(EnvelopeError) as e:
        verify(forged, env, KEY.public_key())
    assert e.value.reason == "bad_signature"


@settings(max_examples=200, deadline=None)
@given(envelopes, st.data())
def test_every_bit_flip_of_a_signed_envelope_is_refused(env, data):
    raw = bytearray(encode(env, KEY))
    pos = data.draw(st.integers(0, len(raw) - 1))
    raw[pos] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises(EnvelopeError) as e:
        verify(bytes(raw), decode(bytes(raw)), KEY.public_key())
    assert e.value.reason in REASONS | {"bad_signature", "unsigned"}


@settings(max_examples=800, deadline=None)
@given(st.one_of(st.binary(max_size=400),
                 st.binary(max_size=400).map(lambda b: b"FHEE\x02" + b),   # past the magic: the fields
                 st.binary(max_size=120).map(lambda b: b"FHEE\x02\x01a\x01b\x01c\x01d" + b)))  # the tail
def test_random_bytes_only_raise_envelope_error(data):
    try:
        decode(data)
    except EnvelopeError as e:
        assert e.reason in REASONS


@settings(max_examples=300, deadline=None)
@given(envelopes, st.booleans(), st.data())
def test_every_truncation_is_refused(env, signed, data):
    raw = encode(env, KEY if signed else None)
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
    for key in (None, KEY):
        with pytest.raises(EnvelopeError) as e:
            decode(encode(sample(), key) + b"\x00")
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
    (b"XXXX\x02", "bad_magic"), (b"FHEE\x04" + b"\x00" * 40, "bad_version"), (b"FHE", "truncated"),
    (b"", "truncated"), (b"FHEE\x02\x00", "bad_field"), (b"FHEE\x02\x41", "bad_field"), (b"FHEE\x02\x05ab", "truncated"),
    (b"FHEE\x02\x02a/", "bad_field"), (b"FHEE\x02\x02ab", "truncated"),
    (b"FHEE\x02\x01a\x01b\x01c\x01d", "truncated"), (b"FHEE\x02\x01a\x01b\x01c\x01d\x07" + b"\x00" * 20, "bad_field"),
])
def test_specific_reasons(data, reason):
    with pytest.raises(EnvelopeError) as e:
        decode(data)
    assert e.value.reason == reason


@pytest.mark.parametrize("field,value,reason", [
    ("model_id", "", "bad_field"), ("gateway_id", "a" * 65, "bad_field"), ("camera_id", "cam 1", "bad_field"),
    ("model_id", "é", "bad_field"), ("key_fingerprint", "../x", "bad_field"), ("sequence", -1, "out_of_range"),
    ("sequence", 2**63, "out_of_range"), ("sequence", 2**64, "out_of_range"), ("capture_time", float("nan"), "bad_field"),
    ("capture_time", -1.0, "out_of_range"),
])
def test_encode_refuses_what_decode_would(field, value, reason):
    env = sample()
    kwargs = {**env.__dict__, field: value}
    with pytest.raises(EnvelopeError) as e:
        encode(Envelope(**kwargs))
    assert e.value.reason == reason


@pytest.mark.parametrize("sequence", [2**63, 2**63 + 1, 2**64 - 1])
def test_sequence_beyond_sqlite_integers_refused_in_decoder(sequence):
    """Issue 15 item 9: such sequences made SQLite raise (one traceback per message)."""
    raw = bytearray(encode(sample(b"")))
    raw[-20:-12] = struct.pack(">Q", sequence)
    with pytest.raises(EnvelopeError) as e:
        decode(bytes(raw))
    assert e.value.reason == "out_of_range"


@pytest.mark.parametrize("value,reason", [(float("inf"), "bad_field"), (float("nan"), "bad_field"),
                                          (-5.0, "out_of_range")])
def test_bad_capture_time_in_message_refused(value, reason):
    raw = bytearray(encode(sample(b"")))
    raw[-12:-4] = struct.pack(">d", value)
    with pytest.raises(EnvelopeError) as e:
        decode(bytes(raw))
    assert e.value.reason == reason
