"""Encrypted inference end to end (protect -> EdgeModel -> OwnerModel) against onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from protected_nn import zoo
from protected_nn.api import EdgeModel, OwnerModel, ProtectOptions, protect
from protected_nn.artifacts import ModelArtifacts
from protected_nn.ckks.context import Ckks
from protected_nn.ckks.params import CkksParams
from protected_nn.errors import InputError, KeyMaterialError, ResultError

TOL = 1e-2   # max |encrypted - onnxruntime| as a fraction of the output range (issue target)


def ort_run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0]


def rel_error(y, ref) -> float:
    span = max(float(np.ptp(ref)), 1e-6)
    return float(np.max(np.abs(y - ref))) / span


@pytest.fixture(scope="module")
def tenseal_net():
    model = zoo.tenseal_cnn(0)
    prot = protect(model)
    return model, prot, EdgeModel(prot.artifacts), OwnerModel(prot.artifacts, prot.secret_key)


def test_tenseal_cnn_matches_onnxruntime(tenseal_net):
    model, _, edge, owner = tenseal_net
    rng = np.random.default_rng(7)
    for _ in range(2):
        x = rng.uniform(0, 1, size=(1, 1, 28, 28)).astype(np.float32)
        y = owner.decrypt(edge.infer(x))
        ref = ort_run(model, x)
        assert y.shape == ref.shape
        assert rel_error(y, ref) <= TOL


def test_plan_report_and_sizes(tenseal_net):
    _, prot, _, _ = tenseal_net
    rep = prot.report
    assert rep["ckks"]["log_q"] <= rep["ckks"]["max_log_q_128"]
    assert rep["encrypted"]["trained_parameters_in_clear"] == 0
    assert rep["fidelity"]["max_rel_error"] <= TOL
    assert rep["fidelity"]["result_bytes"] <= 64 * 1024
    assert "128-bit" in prot.report_text and "Fidelity" in prot.report_text


def test_no_trained_weight_in_clear(tenseal_net):
    model, prot, _, _ = tenseal_net
    blob = b"".join(prot.artifacts.as_members().values())
    for init in model.graph.initializer:
        arr = onnx.numpy_helper.to_array(init).astype(np.float32).reshape(-1)
        probe = arr[: min(4, arr.size)]
        assert probe.tobytes() not in blob, f"{init.name} appears in clear"
        assert probe.astype(np.float64).tobytes() not in blob, f"{init.name} appears in clear (f64)"
    assert prot.secret_key not in blob


def test_edge_side_holds_no_secret_key(tenseal_net):
    _, _, edge, _ = tenseal_net
    assert edge._eval.ckks.he.is_secret_key_empty()
    assert not hasattr(edge._eval.ckks, "decrypt")


def test_missing_rotation_key_is_an_error_not_garbage(tenseal_net):
    _, prot, _, _ = tenseal_net
    plan = prot.artifacts.plan_json()
    a = prot.artifacts
    ck = Ckks.from_public_bytes(CkksParams.from_dict(plan["ckks"]), a.context, a.public_key,
                                a.relin_key, a.rotation_keys, set(plan["rotation_steps"]))
    ct = ck.encrypt(np.zeros(ck.slots), 2.0 ** 20)
    with pytest.raises(KeyMaterialError, match="no Galois key for rotation step 3"):
        ck.rotate(ct, 3)


def test_wrong_input_shape_and_dtype(tenseal_net):
    _, _, edge, _ = tenseal_net
    with pytest.raises(InputError, match=r"\(1, 1, 28, 28\)"):
        edge.infer(np.zeros((1, 1, 27, 28), np.float32))
    with pytest.raises(InputError, match="dtype"):
        edge.infer(np.array([["a"] * 28] * 28).reshape(1, 1, 28, 28))
    with pytest.raises(InputError, match="NaN"):
        edge.infer(np.full((1, 1, 28, 28), np.nan, np.float32))


def test_truncated_and_altered_results_are_refused(tenseal_net):
    _, _, edge, owner = tenseal_net
    payload = edge.infer(np.full((1, 1, 28, 28), 0.5, np.float32))
    with pytest.raises(ResultError):
        owner.decrypt(payload[: len(payload) // 2])
    with pytest.raises(ResultError):
        owner.decrypt(b"XXXX" + payload[4:])
    with pytest.raises(ResultError):
        owner.decrypt(b"")
    altered = bytearray(payload)
    altered[len(altered) // 2] ^= 0x80     # a high coefficient bit: far outside the noise
    with pytest.raises(ResultError):
        owner.decrypt(bytes(altered))


def test_result_of_another_models_key_is_refused(tenseal_net):
    _, prot, edge, _ = tenseal_net
    other = protect(zoo.tenseal_cnn(1))
    other_owner = OwnerModel(other.artifacts, other.secret_key)
    payload = edge.infer(np.full((1, 1, 28, 28), 0.25, np.float32))
    with pytest.raises(ResultError, match="key"):
        other_owner.decrypt(payload)


@pytest.mark.parametrize("seed,activation", [(1, "square"), (2, "relu")])
def test_random_small_cnns_match_onnxruntime(seed, activation):
    """Several convs, pooling, BatchNorm, a residual join and a dense head (protected_nn.zoo).
    With x*x the network is exact; with Relu it runs the fitted polynomial, so the encrypted
    result must match the plaintext IR (the approximated network) to the CKKS tolerance, and
    onnxruntime to the fit error the plan report states."""
    from protected_nn import ir
    from protected_nn.frontend import load_onnx

    model = zoo.random_cnn(seed, size=8, activation=activation)
    shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
    rng = np.random.default_rng(seed)
    cal = rng.uniform(0, 1, size=(8,) + shape).astype(np.float32)
    prot = protect(model, calibration=cal, options=ProtectOptions(poly_degree=4, force=True))
    edge, owner = EdgeModel(prot.artifacts), OwnerModel(prot.artifacts, prot.secret_key)
    x = cal[0]
    y = owner.decrypt(edge.infer(x))
    ref = ort_run(model, x)
    approx = ir.evaluate_plain(load_onnx(model, calibration=cal, poly_degree=4), x)
    assert rel_error(y, approx) <= TOL
    if activation == "square":
        assert rel_error(y, ref) <= TOL
    else:
        assert rel_error(y, ref) <= max(0.25, 2 * prot.report["fidelity"]["max_rel_error"])


def test_artifacts_round_trip_through_members(tenseal_net):
    _, prot, _, _ = tenseal_net
    again = ModelArtifacts.from_members(prot.artifacts.as_members())
    assert again.key_fingerprint == prot.artifacts.key_fingerprint
