"""A protected model's bundle in the compact encoding (ckks/compact.py, runtime/params_blob.py):
signed and read back, it infers as onnxruntime does; the same model with its members in SEAL's
own serialization (older bundles) infers the same; an unknown or damaged encoding is refused
with a BundleError naming the member."""
from __future__ import annotations

import dataclasses

import numpy as np
import onnxruntime as ort
import pytest

from protected_nn import bundle, zoo
from protected_nn.api import EdgeModel, OwnerModel, ProtectOptions, protect
from protected_nn.ckks import compact
from protected_nn.errors import BundleError
from protected_nn.runtime import params_blob

TOL = 1e-2


@pytest.fixture(scope="module")
def model():
    return zoo.tenseal_cnn(0)


@pytest.fixture(scope="module")
def prot(model):
    return protect(model, options=ProtectOptions(check_samples=1, progress=False))


def _check_infers(model, artifacts, secret_key) -> np.ndarray:
    x = np.random.default_rng(5).uniform(0, 1, (1, 1, 28, 28)).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    y = OwnerModel(artifacts, secret_key).decrypt(EdgeModel(artifacts).infer(x))
    assert np.max(np.abs(y - ref)) / max(float(np.ptp(ref)), 1e-6) <= TOL
    return y


def _legacy(artifacts):
    """The same keys and weights as SEAL's own bytes, as bundles before the compact encoding."""
    entries = params_blob.unpack(artifacts.params, _count(artifacts.params))
    return dataclasses.replace(
        artifacts,
        public_key=compact.decode(artifacts.public_key, "pk"),
        relin_key=compact.decode(artifacts.relin_key, "relin"),
        rotation_keys=compact.decode(artifacts.rotation_keys, "rot") if artifacts.rotation_keys else b"",
        params=params_blob.pack([compact.decode(e, "w") for e in entries]))


def _count(blob: bytes) -> int:
    return int.from_bytes(blob[5:9], "big")


def test_members_are_compact_and_a_signed_bundle_infers_as_onnxruntime(model, prot):
    a = prot.artifacts
    for name in ("public_key", "relin_key", "rotation_keys"):
        assert getattr(a, name).startswith(compact.MAGIC), name
    assert a.params.startswith(params_blob.MAGIC_COMPACT)
    assert all(bytes(e[:4]) == compact.MAGIC for e in params_blob.unpack(a.params, _count(a.params)))
    owner = bundle.generate_owner_key()
    _, read = bundle.read_bundle(bundle.build_bundle("m", a, owner), owner.public_key())
    _check_infers(model, read, prot.secret_key)


def test_older_bundles_with_seal_bytes_still_infer(model, prot):
    legacy = _legacy(prot.artifacts)
    assert legacy.params.startswith(params_blob.MAGIC_SEAL)
    assert len(legacy.params) > len(prot.artifacts.params) * 1.2      # what the encoding saves
    _check_infers(model, legacy, prot.secret_key)


def test_an_unknown_params_encoding_is_refused_by_name(prot):
    a = dataclasses.replace(prot.artifacts, params=b"FHEP9" + prot.artifacts.params[5:])
    with pytest.raises(BundleError, match="params: encoding FHEP9 is not known"):
        EdgeModel(a)
    key = prot.artifacts.rotation_keys
    a = dataclasses.replace(prot.artifacts, rotation_keys=key[:4] + b"\x09" + key[5:])
    with pytest.raises(BundleError, match="rotation_keys: compact encoding version 9 is not known"):
        EdgeModel(a)


@pytest.mark.parametrize("damage", ["truncated", "all ones", "garbage"])
def test_a_damaged_weight_ciphertext_is_a_bundle_error_naming_it(prot, damage):
    entries = [bytes(e) for e in params_blob.unpack(prot.artifacts.params, _count(prot.artifacts.params))]
    e = entries[1]
    entries[1] = {"truncated": e[:len(e) // 2],
                  "all ones": e[:len(e) - 1000] + b"\xff" * 1000,      # residues above their primes
                  "garbage": compact.MAGIC + b"\x01" + bytes(range(256)) * 4}[damage]
    a = dataclasses.replace(prot.artifacts, params=params_blob.pack(entries))
    with pytest.raises(BundleError, match="params, ciphertext 1"):
        EdgeModel(a)


def test_params_blob_refuses_mixed_encodings(prot):
    entries = params_blob.unpack(prot.artifacts.params, _count(prot.artifacts.params))
    with pytest.raises(ValueError, match="mix"):
        params_blob.pack([bytes(entries[0]), compact.decode(entries[1], "w")])


def test_keys_trimmed_to_the_plans_levels_are_smaller_and_infer_the_same(model, prot):
    """protect stores each evaluation key only as wide as the plan uses it (runtime/owner.py
    trim_key_rows); a black frame takes the evaluator's other path (encrypted, not encoded)."""
    whole = protect(model, options=ProtectOptions(check_samples=1, progress=False, trim_keys=False)).artifacts
    trimmed = prot.artifacts
    assert len(trimmed.rotation_keys) < 0.9 * len(whole.rotation_keys)
    assert len(trimmed.relin_key) <= len(whole.relin_key)
    _check_infers(model, trimmed, prot.secret_key)
    black = np.zeros((1, 1, 28, 28), np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {sess.get_inputs()[0].name: black})[0]
    y = OwnerModel(trimmed, prot.secret_key).decrypt(EdgeModel(trimmed).infer(black))
    assert np.max(np.abs(y - ref)) / max(float(np.ptp(ref)), 1e-3) <= TOL
