"""The backend tests' stand-in decryptor (tests/support/backend.py) itself."""
from protected_nn.errors import ResultError
from tests.support.backend import FP, MODEL, IdentityCodec, identity_payload


def test_identity_codec_round_trip_and_rejects_garbage():
    out = IdentityCodec().decrypt(MODEL, FP, identity_payload(12.5, 3.0))
    assert out.shape == (1, 2) and out[0, 0] == 12.5 and out[0, 1] == 3.0
    try:
        IdentityCodec().decrypt(MODEL, FP, b"abc")
    except ResultError:
        pass
    else:
        raise AssertionError("a payload that is not a float64 vector must be refused")
