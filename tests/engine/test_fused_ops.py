"""The patched Pyfhel's fused products and hoisted rotations (scripts/pyfhel/0002, used through
protected_nn/ckks/context.Ckks.dot / rotate_many): the dot products give exactly SEAL's residues
(byte-identical ciphertexts, also across the lazy-reduction boundary), a hoisted rotation
decrypts to the rotated vector, and what SEAL would refuse (other levels, other scales, a missing
Galois key) is refused, never computed into garbage. The evaluator gives the same results with
the fused operations off (plain Pyfhel's path)."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from protected_nn import zoo
from protected_nn.api import EdgeModel, OwnerModel, ProtectOptions, protect
from protected_nn.ckks.context import SecretCkks
from protected_nn.ckks.params import CkksParams
from protected_nn.errors import KeyMaterialError

STEPS = {1, 2, -3, 64, 1024}
# 60-bit primes: a 128-bit sum of ct x ct products must be reduced every 63 terms
WIDE = CkksParams(8192, (60, 40, 60), 40)
# LeNet-like: rotations at lower levels keep only some of the primes
DEEP = CkksParams(8192, (40, 30, 30, 30, 50), 30)


@pytest.fixture(scope="module")
def wide():
    return SecretCkks.generate(WIDE, STEPS)


@pytest.fixture(scope="module")
def deep():
    return SecretCkks.generate(DEEP, STEPS)


def _vecs(n: int, slots: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, slots) for _ in range(n)]


def _seal_way(ck, fn, *args):
    ck.fused = False
    try:
        return fn(*args)
    finally:
        ck.fused = True


def test_patch_is_installed(wide):
    assert wide.fused, "the installed Pyfhel lacks scripts/pyfhel/0002: re-run scripts/setup.sh"


@pytest.mark.parametrize("terms", [1, 5, 70])
def test_dot_of_ciphertexts_is_seal_multiply_and_add_byte_for_byte(wide, terms):
    xs = [wide.encrypt(v, 2.0 ** 40) for v in _vecs(terms, WIDE.slots, 1)]
    ws = [wide.encrypt(v, 2.0 ** 40) for v in _vecs(terms, WIDE.slots, 2)]
    fused = wide.dot(xs, ws)
    seal = _seal_way(wide, wide.dot, xs, ws)
    assert fused.size() == 3 and seal.size() == 3
    assert fused.to_bytes("none") == seal.to_bytes("none")
    wide.relinearize(fused)
    wide.rescale(fused)
    want = sum(a * b for a, b in zip(_vecs(terms, WIDE.slots, 1), _vecs(terms, WIDE.slots, 2)))
    assert np.max(np.abs(wide.decrypt(fused) - want)) < 1e-3 * terms


@pytest.mark.parametrize("level", [0, 2])
def test_dot_with_plaintexts_is_seal_multiply_plain_and_add(deep, level):
    ws = [deep.encrypt(v, 2.0 ** 30, level) for v in _vecs(9, DEEP.slots, 3)]
    ps = [deep.encode(v, 2.0 ** 30, level) for v in _vecs(9, DEEP.slots, 4)]
    fused = deep.dot(ps, ws)
    assert fused.to_bytes("none") == _seal_way(deep, deep.dot, ps, ws).to_bytes("none")


def test_dot_refuses_what_seal_would_refuse(deep):
    a, b = (deep.encrypt(v, 2.0 ** 30) for v in _vecs(2, DEEP.slots, 5))
    low = deep.encrypt(_vecs(1, DEEP.slots, 6)[0], 2.0 ** 30, 1)
    with pytest.raises(ValueError, match="different levels"):
        deep.dot([a, low], [b, b])
    other_scale = deep.encrypt(_vecs(1, DEEP.slots, 7)[0], 2.0 ** 25)
    with pytest.raises(ValueError, match="scale mismatch"):
        deep.dot([a, other_scale], [b, b])
    size3 = deep.multiply_no_relin(a, b)
    with pytest.raises(ValueError, match="size 2"):
        deep.dot([size3], [b])
    with pytest.raises(ValueError, match="mixed"):
        deep.dot([a, deep.encode(_vecs(1, DEEP.slots, 8)[0], 2.0 ** 30, 0)], [b, b])


@pytest.mark.parametrize("level", [0, 3])
def test_hoisted_rotations_decrypt_to_the_rotated_vector(deep, level):
    v = _vecs(1, DEEP.slots, 9)[0]
    ct = deep.encrypt(v, 2.0 ** 30, level)
    steps = [1, 2, 0, -3, 64, 1024, 2]            # a zero step and a repeated one too
    outs = deep.rotate_many(ct, steps)
    seal = _seal_way(deep, deep.rotate_many, ct, steps)
    assert len(outs) == len(steps)
    for k, got, ref in zip(steps, outs, seal):
        dec = deep.decrypt(got)
        assert np.max(np.abs(dec - np.roll(v, -k))) < 1e-4, k
        assert np.max(np.abs(dec - deep.decrypt(ref))) < 1e-4, k
        assert got.scale == ref.scale


def test_hoisted_rotation_without_its_key_is_refused(deep):
    ct = deep.encrypt(_vecs(1, DEEP.slots, 10)[0], 2.0 ** 30)
    with pytest.raises(KeyMaterialError, match="no Galois key for rotation step 5"):
        deep.rotate_many(ct, [1, 5])
    # the C++ side checks too (a key set without the step, whatever the Python bookkeeping says)
    with pytest.raises(ValueError, match="no Galois key for step 7"):
        deep.he.rotate_hoisted(ct, [1, 7])


@pytest.fixture(scope="module")
def lenet_like():
    """A two-convolution CNN through the mapped packing: babies from one parent (hoisted),
    giant sums (fused), a gathered first layer (fused with plaintexts)."""
    model = zoo.pooled_cnn(3)
    return model, protect(model, options=ProtectOptions(check_samples=1, progress=False))


def test_evaluator_fused_and_seal_ways_agree_with_onnxruntime(lenet_like):
    model, prot = lenet_like
    edge = EdgeModel(prot.artifacts)
    owner = OwnerModel(prot.artifacts, prot.secret_key)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(11).uniform(0, 1, shape).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    span = float(np.ptp(ref)) or 1.0
    steps = prot.artifacts.plan_json()["steps"]
    parents = [(b[0], b[1]) for s in steps for b in s.get("babies", []) if b[2]]
    assert len(parents) > len(set(parents)), "no two babies share a parent: nothing hoisted"
    ck = edge._eval.ckks
    assert ck.fused
    hoisted, real = [], ck.he.rotate_hoisted
    ck.he = _Spy(ck.he, lambda ct, steps: hoisted.append(len(steps)) or real(ct, steps))
    for fused in (True, False):
        ck.fused = fused
        y = owner.decrypt(edge.infer(x))
        assert np.max(np.abs(y - ref)) / span < 1e-2, fused
        assert bool(hoisted) == fused and all(n > 1 for n in hoisted), (fused, hoisted)
        hoisted.clear()
    ck.fused = True


class _Spy:
    """The Pyfhel object with its rotate_hoisted replaced (a Cython class takes no attributes)."""
    def __init__(self, he, rotate_hoisted):
        self._he, self.rotate_hoisted = he, rotate_hoisted

    def __getattr__(self, name):
        return getattr(self._he, name)


def test_keys_load_in_place_from_a_buffer(deep):
    """from_buffer_rotate_key / from_buffer_relin_key (the gateway's key loading,
    context.load_key_members): SEAL reads the member's bytes where they are, from any buffer."""
    from Pyfhel import Pyfhel

    from protected_nn.ckks import compact

    pub = deep.public_bytes(seeded_keys=True)
    gw = Pyfhel()
    gw.from_bytes_context(pub["context"])
    gw.from_bytes_public_key(compact.seal_bytes(pub["public_key"], "public_key"))
    rot = bytearray(compact.seal_bytes(pub["rotation_keys"], "rotation_keys"))
    assert gw.from_buffer_rotate_key(memoryview(rot)) == len(rot)
    assert gw.from_buffer_relin_key(compact.seal_bytes(pub["relin_key"], "relin_key")) > 0
    v = _vecs(1, DEEP.slots, 12)[0]
    ct = gw.encryptFrac(v, scale=2.0 ** 30)
    assert np.max(np.abs(deep.decrypt(gw.rotate(ct, 64, True)) - np.roll(v, -64))) < 1e-4
    prod = gw.multiply(ct, ct, True)
    gw.relinearize(prod)
    assert np.max(np.abs(deep.decrypt(prod) - v * v)) < 1e-3
    rot[40:80] = bytes(40)                    # damaged: SEAL refuses it, nothing crashes
    with pytest.raises((ValueError, RuntimeError)):
        gw.from_buffer_rotate_key(memoryview(rot))
    with pytest.raises(ValueError, match="empty"):
        gw.from_buffer_rotate_key(b"")
