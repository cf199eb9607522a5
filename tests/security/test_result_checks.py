"""Issue 15 item 1 at the decoder: results forged from the plan alone (no key) are refused by the
decoder's own checks with a counted reason - and each construction is real: decrypted without the
checks, it yields the values its maker chose (or zeros), which passed before these checks."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from protected_nn import api
from protected_nn.errors import ResultError
from protected_nn.runtime.result_checks import REASONS, ResultRejected
from tests.support.forgery import Forger

CHOSEN = [25.0, 4.0]


@pytest.fixture(scope="module")
def owner(tmp_path_factory):
    from tests.support.tiny_models import crowd_model
    path = tmp_path_factory.mktemp("rc") / "tiny.onnx"
    crowd_model(path)
    prot = api.protect(path)
    model = api.OwnerModel(prot.artifacts, prot.secret_key)
    return model, api.EdgeModel(prot.artifacts), Forger(model.plan.to_dict())


def unchecked(model, payload: bytes) -> np.ndarray:
    """What the decoder returned before issue 15: decrypt and read the output slots, no checks."""
    d = model._decoder
    values = d.sk.decrypt(d.sk.ct_from_bytes(d.sk.unpack_result(payload, 4 * d.sk.slots)))
    return values[d.slots]


CASES = [
    ("transparent", lambda f, g: f.transparent(CHOSEN), "result_transparent", CHOSEN),
    ("small c1", lambda f, g: f.small_c1(CHOSEN), "result_degenerate", CHOSEN),
    ("all-zero coefficients", lambda f, g: f.all_zero(), "result_transparent", [0.0, 0.0]),
    ("scale +inf", lambda f, g: f.scale_inf(np.random.default_rng(3)), "result_scale", [0.0, 0.0]),
    ("scale x2", lambda f, g: f.wrong_scale(CHOSEN, 2.0), "result_scale", None),
    ("not NTT", lambda f, g: f.not_ntt(CHOSEN), "result_not_ntt", None),
    ("other level", lambda f, g: f.wrong_level(g), "result_level", None),
]


@pytest.mark.parametrize("name,make,reason,control", CASES, ids=[c[0] for c in CASES])
def test_forged_results_are_refused_with_their_reason(owner, name, make, reason, control):
    model, edge, forger = owner
    genuine = edge.infer(np.array([[0.1, 0.1, 0, 0]], np.float32))
    payload = make(forger, genuine)
    if control is not None:      # the construction works: without the checks it says what was chosen
        assert np.allclose(unchecked(model, payload), control, atol=1e-3)
    with pytest.raises(ResultRejected) as e:
        model.decrypt(payload)
    assert e.value.reason == reason and reason in REASONS


def test_genuine_results_pass_every_check(owner):
    model, edge, _ = owner
    rng = np.random.default_rng(0)
    for _ in range(5):
        x = rng.uniform(0, 1, (1, 4)).astype(np.float32)
        y = model.decrypt(edge.infer(x))
        assert np.allclose(y, [[30 * x[0, 0], 10 * x[0, 1] - 5]], atol=1e-2)


def test_rejection_reason_survives_the_decryption_pool_process_boundary():
    exc = pickle.loads(pickle.dumps(ResultRejected("result_scale", "scale inf")))
    assert isinstance(exc, ResultError) and exc.reason == "result_scale" and str(exc) == "scale inf"
