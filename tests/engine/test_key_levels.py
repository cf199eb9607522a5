"""Galois keys trimmed to the levels the plan rotates at (runtime/plan_links.rotation_levels,
ckks/seeded.seeded_galois_keys with `primes`): the levels the rule computes are the levels the
evaluator really rotates at, a trimmed key rotates exactly at and below its level and is garbage
above it (so the trimming is real), and the bytes shrink."""
from __future__ import annotations

import numpy as np
import pytest

from protected_nn import zoo
from protected_nn.api import EdgeModel, ProtectOptions, protect
from protected_nn.ckks import context as C
from protected_nn.ckks import seeded
from protected_nn.ckks.context import Ckks, SecretCkks
from protected_nn.ckks.params import CkksParams
from protected_nn.runtime.plan_links import rotation_levels
from protected_nn.runtime.plan_sections import parse_plan

PARAMS = CkksParams(8192, (40, 30, 30, 30, 50), 30)


def _primes_of(ct, n: int) -> int:
    """Primes a ciphertext still has, read from its uncompressed size (Pyfhel's mod_level
    counter is not reliable: protected_nn/ckks/context.py)."""
    return (len(ct.to_bytes("none")) - C.SEAL_CT_PREFIX) // (ct.size() * n * 8)


@pytest.mark.parametrize("seed", [3, 5])
def test_rule_matches_the_levels_the_evaluator_rotates_at(seed, monkeypatch):
    model = zoo.pooled_cnn(seed)
    prot = protect(model, options=ProtectOptions(check_samples=1, progress=False))
    doc = parse_plan(prot.artifacts.plan_json())
    rule = rotation_levels(doc)
    assert set(rule) == {k % doc.slots for k in doc.rotation_steps}
    data_primes = len(doc.ckks.params.qi_sizes) - 1
    seen: dict[int, int] = {}
    real_rotate, real_many = Ckks.rotate, Ckks.rotate_many

    def note(ct, k):
        k %= doc.slots
        if k:
            level = data_primes - _primes_of(ct, doc.ckks.params.n)
            seen[k] = min(seen.get(k, level), level)

    def rotate(self, ct, k):
        note(ct, k)
        return real_rotate(self, ct, k)

    def rotate_many(self, ct, steps):
        for k in steps:
            note(ct, k)
        return real_many(self, ct, steps)

    monkeypatch.setattr(Ckks, "rotate", rotate)
    monkeypatch.setattr(Ckks, "rotate_many", rotate_many)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    EdgeModel(prot.artifacts).infer(np.random.default_rng(0).uniform(0, 1, shape).astype(np.float32))
    assert seen == rule


def test_trimmed_key_rotates_down_to_its_level_and_not_above():
    owner = SecretCkks.generate(PARAMS, {1, 4}, evaluation_keys=False)
    data_primes = len(PARAMS.qi_sizes) - 1
    full = seeded.seeded_galois_keys(owner.he, [1, 4], "zstd")
    trimmed = seeded.seeded_galois_keys(owner.he, [1, 4], "zstd", primes={1: 2, 4: 0})
    assert len(trimmed) < 0.85 * len(full)
    pub = owner.public_bytes(seeded_keys=True)
    gw = Ckks.from_public_bytes(PARAMS, pub["context"], pub["public_key"], pub["relin_key"],
                                trimmed, {1, 4})
    v = np.random.default_rng(1).uniform(-1, 1, PARAMS.slots)
    for level in range(data_primes):
        ct = gw.encrypt(v, 2.0 ** 30, level)
        for k in (1, 4):
            err = float(np.max(np.abs(owner.decrypt(gw.rotate(ct, k)) - np.roll(v, -k))))
            if k == 1 and data_primes - level > 2:
                assert err > 1.0, f"a key trimmed to 2 primes rotated with {data_primes - level}"
            else:
                assert err < 1e-4, (k, level)


def test_gateway_gives_back_the_key_memory_no_rotation_reads():
    owner = SecretCkks.generate(PARAMS, {1, 4}, evaluation_keys=False)
    pub = owner.public_bytes(seeded_keys=True)
    levels = {1: 2, 4: 0}       # step 1 only rotated at level 2 (2 of 4 data primes), 4 everywhere
    gw = Ckks.from_public_bytes(PARAMS, pub["context"], pub["public_key"], pub["relin_key"],
                                pub["rotation_keys"], {1, 4}, levels)
    # key 1 keeps 2 of its 4 digits and in each 3 of 5 primes: 12 of its 40 residue polynomials
    # (64 KB each at N=8192); pages cut at the ends of the 8 released ranges lose at most 32 KB
    assert gw.key_bytes_released == pytest.approx(28 * 8192 * 8, rel=0.03)
    v = np.random.default_rng(2).uniform(-1, 1, PARAMS.slots)
    for level in range(len(PARAMS.qi_sizes) - 1):
        ct = gw.encrypt(v, 2.0 ** 30, level)
        for k in (1, 4):
            got = [gw.rotate(ct, k), gw.rotate_many(ct, [k, 4 if k == 1 else 1])[0]]
            for out in got:
                err = float(np.max(np.abs(owner.decrypt(out) - np.roll(v, -k))))
                assert (err > 1.0) if (k == 1 and level < 2) else (err < 1e-4), (k, level)
