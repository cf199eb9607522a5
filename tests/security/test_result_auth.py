"""Envelope v3 (protected_nn/result_auth.py): a gateway's agreement key, certified once with its
Ed25519 key, and an AES-GCM tag per result under the key agreed with the model's result key.
Checked at the MessageChecker (the same code `run` uses), over a real store and a real export."""
from __future__ import annotations

import hashlib
import os
import time

import pytest

from backend_decryptor.catalog import StoreCatalog
from backend_decryptor.checks import MessageChecker, Rejected
from backend_decryptor.cli import main as backend_cli
from backend_decryptor.config import ChecksConfig
from backend_decryptor.store import Store
from edge_agent.bundle_watch import load_bundle
from protected_nn import api, bundle, envelope, result_auth
from protected_nn.errors import BundleError, EnvelopeError
from protected_nn.gateway_key import generate
from tests.support.gateway_keys import key_for, public_keys
from tests.support.tiny_models import frame_model

FP = "0123abcd"
SECRET = os.urandom(256)            # stands in for a model's secret key bytes (unit tests)


class _Catalog:
    """The two questions the checker asks a catalog, for one model key."""
    def __init__(self, secret=SECRET):
        self.secret = secret

    def fingerprints(self, model_id):
        return {FP} if model_id == "m" else None

    def result_key(self, model_id, fingerprint):
        if model_id != "m" or fingerprint != FP or self.secret is None:
            return None
        return result_auth.model_result_key(self.secret, fingerprint)


def _checker(catalog=None):
    cfg = ChecksConfig(allowed_gateways=["gw-*"], gateway_keys=public_keys(), cameras_required=False)
    return MessageChecker(cfg, "fhe-edge", catalog or _Catalog(), lambda *a: False)


def _sealer(gateway="gw-1", secret=SECRET, signing_key=None):
    pub = result_auth.public_text(result_auth.model_result_key(secret, FP))
    return result_auth.SealerCache(signing_key or key_for(gateway), gateway).signer(FP, pub)


def _message(seq=1, gateway="gw-1", signer=None, payload=b"\x07" * 3000):
    env = envelope.Envelope(model_id="m", key_fingerprint=FP, gateway_id=gateway, camera_id="cam-1",
                            sequence=seq, capture_time=time.time(), payload=payload)
    return f"fhe-edge/infer/{gateway}/cam-1", envelope.encode(env, signer or _sealer(gateway))


def _reason(checker, topic, data) -> str:
    with pytest.raises(Rejected) as e:
        checker.check(topic, data)
    return e.value.reason


def test_v3_round_trip_and_every_altered_byte_refused():
    checker = _checker()
    topic, data = _message()
    env = checker.check(topic, data)
    assert env.version == envelope.AUTH_VERSION and len(env.signature) == result_auth.AUTH_LEN
    auth_at = len(data) - result_auth.AUTH_LEN
    # header, payload, agreement key, certificate signature, nonce, tag: every region is covered
    for pos in (5, 20, auth_at - 100, auth_at - 1, auth_at, auth_at + 40, auth_at + 100, len(data) - 1):
        bad = bytearray(data)
        bad[pos] ^= 0x10
        try:
            checker.check(topic, bytes(bad))
        except Rejected as e:
            assert e.reason in {"bad_signature", "bad_field", "topic_mismatch", "unknown_model", "unknown_key",
                                "gateway_not_allowed", "unknown_gateway", "bad_version"}, (pos, e.reason)
        else:
            pytest.fail(f"a flip at byte {pos} of {len(data)} was accepted")


def test_certificates_and_keys_of_others_do_not_verify():
    checker = _checker()
    # gw-2 certifies its own agreement key but claims to be gw-1
    topic, data = _message(gateway="gw-1", signer=_sealer("gw-1", signing_key=key_for("gw-2")))
    assert _reason(checker, topic, data) == "bad_signature"
    # gw-2 copies gw-1's certificate (public) into its own message: it cannot compute gw-1's MAC key
    _, genuine = _message(gateway="gw-1")
    cert = genuine[len(genuine) - result_auth.AUTH_LEN:][:96]
    _, mine = _message(seq=2, gateway="gw-1", signer=_sealer("gw-1", signing_key=key_for("gw-2")))
    spliced = mine[:len(mine) - result_auth.AUTH_LEN] + cert + mine[len(mine) - 28:]
    assert _reason(checker, topic, spliced) == "bad_signature"
    # a bundle holder who guesses another result key (it lacks the model's secret key)
    topic, data = _message(signer=_sealer("gw-1", secret=os.urandom(256)))
    assert _reason(checker, topic, data) == "bad_signature"
    # a fresh key nobody listed
    topic, data = _message(signer=_sealer("gw-1", signing_key=generate()))
    assert _reason(checker, topic, data) == "bad_signature"


def test_v3_needs_the_result_key_and_v2_keeps_working():
    topic, data = _message()
    assert _reason(_checker(_Catalog(secret=None)), topic, data) == "unknown_key"
    v2 = _message(signer=key_for("gw-1"))
    assert envelope.decode(v2[1]).version == envelope.VERSION
    assert _checker().check(*v2).sequence == 1


def test_v3_has_no_unsigned_form_and_decodes_hostile_bytes_with_reasons():
    topic, data = _message()
    body_end = len(data) - result_auth.AUTH_LEN
    length_at = body_end - 3000 - 21          # u8 signature length precedes the 20-byte tail
    unsigned = bytearray(data[:body_end])
    unsigned[length_at] = 0
    with pytest.raises(EnvelopeError) as e:
        envelope.decode(bytes(unsigned))
    assert e.value.reason == "bad_field"
    rng = __import__("random").Random(7)
    for _ in range(300):
        junk = bytearray(data)
        for _ in range(rng.randrange(1, 6)):
            junk[rng.randrange(len(junk))] = rng.randrange(256)
        try:
            _checker().check(topic, bytes(junk[:rng.randrange(len(junk) + 1)]))
        except Rejected:
            pass


def test_degenerate_agreement_key_is_refused_not_crashing():
    topic, data = _message()
    auth_at = len(data) - result_auth.AUTH_LEN
    zero_pub = bytes(32)                      # a low-order point, certified by the real gateway key
    sig = key_for("gw-1").sign(result_auth.CERT_CONTEXT + b"gw-1\x00" + zero_pub)
    forged = data[:auth_at] + zero_pub + sig + data[auth_at + 96:]
    assert _reason(_checker(), topic, forged) == "bad_signature"


def test_export_carries_the_result_key_and_the_store_verifies(tmp_path):
    """protect -> store -> `backend-decryptor export` -> gateway loads the bundle -> v3 result ->
    the service's StoreCatalog derives the same result key from the stored secret key."""
    prot = api.protect(frame_model(tmp_path / "tiny.onnx"))
    store = Store(tmp_path / "store", create=True)
    store.add_model("tiny", prot, hashlib.sha256(b"tiny").hexdigest())
    out = tmp_path / "tiny.bundle"
    assert backend_cli(["export", "tiny", "--out", str(out), "--store", str(tmp_path / "store")]) == 0
    model, manifest = load_bundle(out, bundle.load_owner_public_key(tmp_path / "tiny.bundle.owner.pub"))
    assert model.result_key and model.result_key.startswith(result_auth.PUBLIC_PREFIX)
    assert prot.secret_key not in out.read_bytes()
    signer = result_auth.SealerCache(key_for("gw-1"), "gw-1").signer(model.key_fingerprint, model.result_key)
    env = envelope.Envelope(model_id="tiny", key_fingerprint=model.key_fingerprint, gateway_id="gw-1",
                            camera_id="cam-1", sequence=1, capture_time=time.time(),
                            payload=api.EdgeModel(model.artifacts).infer(
                                __import__("numpy").zeros((1, 2, 8, 8), "float32")))
    data = envelope.encode(env, signer)
    checker = _checker(StoreCatalog(tmp_path / "store"))
    assert checker.check("fhe-edge/infer/gw-1/cam-1", data).version == envelope.AUTH_VERSION


def test_bundle_refuses_a_malformed_result_key(tmp_path):
    prot = api.protect(frame_model(tmp_path / "tiny.onnx"))
    key = bundle.generate_owner_key()
    with pytest.raises(ValueError):
        bundle.build_bundle("tiny", prot.artifacts, key, result_key="x25519:AAAA")
    good = result_auth.public_text(result_auth.model_result_key(prot.secret_key, prot.artifacts.key_fingerprint))
    data = bundle.build_bundle("tiny", prot.artifacts, key, result_key=good)
    manifest, _ = bundle.read_bundle(data, key.public_key())
    assert manifest["result_key"] == good
    with pytest.raises(BundleError):
        bundle._parse_manifest(bundle._manifest_bytes({**manifest, "result_key": "ed25519:xyz"}))
