"""Seeded keys and symmetric-key weight ciphertexts (the patched Pyfhel, protected_nn/ckks/seeded):
they load through the ordinary gateway path, compute correctly, are about half the size, carry
no secret key, and a rotation step without its key is still refused."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from protected_nn import zoo
from protected_nn.api import EdgeModel, OwnerModel, ProtectOptions, protect
from protected_nn.ckks import seeded
from protected_nn.ckks.context import Ckks, SecretCkks
from protected_nn.ckks.params import CkksParams
from protected_nn.errors import KeyMaterialError

PARAMS = CkksParams(8192, (40, 30, 30, 30, 50), 30)   # a 50-bit special prime: low rotation noise
SCALE = 2.0 ** 30
STEPS = {1, -2, 5, 64}
SEEDED_MAX_RATIO = 0.55   # measured 0.50-0.51 (zstd and uncompressed): the random half is a seed

@pytest.fixture(scope="module")
def owner():
    return SecretCkks.generate(PARAMS, STEPS, evaluation_keys=False)


@pytest.fixture(scope="module")
def gateway(owner):
    pub = owner.public_bytes(seeded_keys=True)
    return Ckks.from_public_bytes(PARAMS, pub["context"], pub["public_key"], pub["relin_key"],
                                  pub["rotation_keys"], STEPS)


def _vec(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, PARAMS.slots)


@pytest.mark.parametrize("level", [0, 2])
def test_seeded_weight_times_input_relinearized_rescaled_rotated(owner, gateway, level):
    x, w = _vec(1), _vec(2)
    weight = gateway.ct_from_bytes(owner.encrypt_to_bytes(w, SCALE, level, seeded_ct=True))
    ct = gateway.encrypt(x, SCALE, level)           # seeded public key
    prod = gateway.multiply_no_relin(ct, weight)   # SEAL refuses operands at different levels
    gateway.relinearize(prod)                       # seeded relinearization key
    gateway.rescale(prod)
    for k in sorted(STEPS):
        got = owner.decrypt(gateway.rotate(prod, k))
        assert np.max(np.abs(got - np.roll(x * w, -k))) < 1e-4, f"rotation {k}"


def test_seeded_is_half_the_size_of_the_full_serialization():
    sk = SecretCkks.generate(PARAMS, STEPS, evaluation_keys=True)
    steps = sorted(sk.rotation_steps)
    w = _vec(3)
    for mode in ("zstd", "none"):
        pairs = {
            "galois": (seeded.seeded_galois_keys(sk.he, steps, mode), sk.he.to_bytes_rotate_key(mode)),
            "relin": (seeded.seeded_relin_key(sk.he, mode), sk.he.to_bytes_relin_key(mode)),
            "public": (seeded.seeded_public_key(sk.he, mode), sk.he.to_bytes_public_key(mode)),
            "ct level 0": (seeded.encrypt_symmetric_seeded(sk.he, w, SCALE, 0, mode),
                           sk.encrypt(w, SCALE, 0).to_bytes(mode)),
            "ct level 2": (seeded.encrypt_symmetric_seeded(sk.he, w, SCALE, 2, mode),
                           sk.encrypt(w, SCALE, 2).to_bytes(mode)),
        }
        for name, (small, full) in pairs.items():
            assert len(small) <= SEEDED_MAX_RATIO * len(full), (mode, name, len(small), len(full))
    # Born at level 2: two primes fewer than a level-0 one, not mod-switched after the fact.
    lvl0 = len(seeded.encrypt_symmetric_seeded(sk.he, w, SCALE, 0, "none"))
    lvl2 = len(seeded.encrypt_symmetric_seeded(sk.he, w, SCALE, 2, "none"))
    assert lvl2 == pytest.approx(lvl0 * 2 / 4, rel=0.01)


def test_no_seeded_artifact_contains_the_secret_key(owner):
    raw = owner.he.to_bytes_secret_key("none")
    body = raw[len(raw) // 4:]
    windows = [body[i:i + 48] for i in range(0, len(body) - 48, len(body) // 16)]
    artifacts = {
        "public_key": seeded.seeded_public_key(owner.he, "none"),
        "relin_key": seeded.seeded_relin_key(owner.he, "none"),
        "galois": seeded.seeded_galois_keys(owner.he, sorted(STEPS), "none"),
        "weight": seeded.encrypt_symmetric_seeded(owner.he, _vec(4), SCALE, 1, "none"),
    }
    for name, blob in artifacts.items():
        assert not any(win in blob for win in windows), f"secret key bytes inside {name}"
        assert raw not in blob


def test_missing_rotation_step_is_refused_at_load_and_at_rotate(owner, gateway):
    pub = owner.public_bytes(seeded_keys=True)       # keys for STEPS only
    with pytest.raises(KeyMaterialError, match=r"lack the Galois keys for steps \[3\]"):
        Ckks.from_public_bytes(PARAMS, pub["context"], pub["public_key"], pub["relin_key"],
                               pub["rotation_keys"], STEPS | {3})
    with pytest.raises(KeyMaterialError, match=r"steps \[1\]"):
        Ckks.from_public_bytes(PARAMS, pub["context"], pub["public_key"], pub["relin_key"], b"", {1})
    ct = gateway.encrypt(_vec(5), SCALE)
    with pytest.raises(KeyMaterialError, match="no Galois key for rotation step 3"):
        gateway.rotate(ct, 3)
    assert seeded.missing_rotation_steps(gateway.he, [1, -2, 3, 7]) == [3, 7]


def test_seeded_calls_refuse_bad_input(owner, gateway):
    with pytest.raises(ValueError, match="unknown compression"):
        seeded.seeded_relin_key(owner.he, "zstdd")   # plain Pyfhel would silently not compress
    with pytest.raises(ValueError, match="non-zero rotation steps"):
        seeded.seeded_galois_keys(owner.he, [])
    with pytest.raises(ValueError, match="slot values"):
        seeded.encrypt_symmetric_seeded(owner.he, np.zeros(10), SCALE, 0)
    with pytest.raises(KeyMaterialError, match="secret key"):
        seeded.seeded_relin_key(gateway.he)                # a gateway cannot make them


def test_unpatched_pyfhel_gets_a_clear_error():
    class PlainPyfhel:   # what Pyfhel 3.5.0 without scripts/pyfhel/*.patch offers: none of the calls
        pass
    assert not seeded.available(PlainPyfhel())
    with pytest.raises(seeded.SeededUnavailable, match="re-run scripts/setup.sh"):
        seeded.seeded_galois_keys(PlainPyfhel(), [1])
    assert seeded.missing_rotation_steps(PlainPyfhel(), [1]) is None


def _ort(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_protect_stores_a_seeded_bundle_that_infers_correctly():
    model = zoo.tenseal_cnn(0)
    full = protect(model, options=ProtectOptions(seeded=False)).artifacts
    prot = protect(model)                            # seeded is the default
    small = prot.artifacts
    for member in ("public_key", "relin_key", "rotation_keys", "params"):
        assert len(getattr(small, member)) <= SEEDED_MAX_RATIO * len(getattr(full, member)), member
    edge, owner = EdgeModel(small), OwnerModel(small, prot.secret_key)
    assert edge._eval.ckks.he.is_secret_key_empty()
    x = np.random.default_rng(11).uniform(0, 1, size=(1, 1, 28, 28)).astype(np.float32)
    ref = _ort(model, x)
    y = owner.decrypt(edge.infer(x))
    assert np.max(np.abs(y - ref)) / max(float(np.ptp(ref)), 1e-6) <= 1e-2
    for member, blob in small.as_members().items():
        assert prot.secret_key not in blob, member


def test_installed_pyfhel_is_built_from_this_checkouts_patches():
    """scripts/build-pyfhel.sh versions the wheel by the patches' hash: a venv left with an older
    build (or plain 3.5.0) after a patch change fails here, not somewhere obscure."""
    import hashlib
    from importlib import metadata
    from pathlib import Path

    patches = sorted((Path(__file__).resolve().parents[2] / "scripts" / "pyfhel").glob("*.patch"))
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in patches)).hexdigest()[:8]
    assert metadata.version("pyfhel") == f"3.5.0+fheedge.h{digest}", "re-run scripts/setup.sh"
