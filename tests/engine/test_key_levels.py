"""Galois keys trimmed to the levels the plan rotates at (runtime/plan_links.rotation_levels,
ckks/seeded.seeded_galois_keys with `primes`): the levels the rule computes are the levels the
evaluator really rotates at, a trimmed key rotates exactly at and below its level and is garbage
above it (so the trimming is real), and the bytes shrink."""
from __future__ import annotations

import numpy as np
import pytest

from protected_nn import zoo
from protected_nn.api import EdgeModel, ProtectOptions, protect
from protected_nn.ckks import compact
from protected_nn.errors import KeyMaterialError
from protected_nn.ckks.context import Ckks, SecretCkks
from protected_nn.ckks.params import CkksParams
from protected_nn.runtime.plan_links import rotation_levels
from protected_nn.runtime.plan_sections import parse_plan

PARAMS = CkksParams(8192, (40, 30, 30, 30, 50), 30)


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

    def note(ckks, ct, k):
        k %= doc.slots
        if k:
            level = data_primes - ckks.ct_primes(ct)
            seen[k] = min(seen.get(k, level), level)

    def rotate(self, ct, k):
        note(self, ct, k)
        return real_rotate(self, ct, k)

    def rotate_many(self, ct, steps):
        for k in steps:
            note(self, ct, k)
        return real_many(self, ct, steps)

    monkeypatch.setattr(Ckks, "rotate", rotate)
    monkeypatch.setattr(Ckks, "rotate_many", rotate_many)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    EdgeModel(prot.artifacts).infer(np.random.default_rng(0).uniform(0, 1, shape).astype(np.float32))
    assert seen == rule


def _trimmed_gateway(widths: dict[int, int]):
    owner = SecretCkks.generate(PARAMS, {1, 4}, evaluation_keys=False)
    pub = owner.public_bytes(seeded_keys=True)
    full = compact.seal_bytes(pub["rotation_keys"], "rotation_keys")
    used = {compact.galois_index(k, PARAMS.n): m for k, m in widths.items()}
    trimmed = compact.encode_kswitch_keys(full, PARAMS.qi_sizes, used)
    assert len(trimmed) < 0.85 * len(pub["rotation_keys"])
    gw = Ckks.from_public_bytes(PARAMS, pub["context"], pub["public_key"], pub["relin_key"],
                                trimmed, {1, 4})
    return owner, gw


def test_trimmed_key_rotates_down_to_its_width_and_is_refused_above():
    owner, gw = _trimmed_gateway({1: 2})       # step 1: ciphertexts of <= 2 of the 4 data primes
    v = np.random.default_rng(1).uniform(-1, 1, PARAMS.slots)
    data_primes = len(PARAMS.qi_sizes) - 1
    for level in range(data_primes):
        ct = gw.encrypt(v, 2.0 ** 30, level)
        for k in (1, 4):
            if k == 1 and data_primes - level > 2:
                with pytest.raises(KeyMaterialError, match="rotation step 1"):
                    gw.rotate(ct, k)
                with pytest.raises(KeyMaterialError, match="rotation step 1"):
                    gw.rotate_many(ct, [4, k])        # the hoisted path checks too
                continue
            steps = [k, 5 - k] if data_primes - level <= 2 else [k]   # hoisted where both may
            for out in (gw.rotate(ct, k), gw.rotate_many(ct, steps)[0]):
                assert np.max(np.abs(owner.decrypt(out) - np.roll(v, -k))) < 1e-4, (k, level)


def test_gateway_gives_back_the_key_memory_no_rotation_reads():
    _, gw = _trimmed_gateway({1: 2})
    # key 1 keeps 2 of its 4 digits and in each 3 of 5 primes: 12 of its 40 residue polynomials
    # (64 KB each at N=8192); pages cut at the ends of the 8 released ranges lose at most 32 KB
    assert gw.key_bytes_released == pytest.approx(28 * 8192 * 8, rel=0.03)
