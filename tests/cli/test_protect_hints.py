"""A newcomer's first day with `protect` / `infer` / `decrypt` (issue 16, protect side): the
calibrated input range is printed, recorded and enforced by warnings; failures name their cause
and the remedies that exist; bad files and cards get clear messages; a failed protect leaves
nothing behind. The real console scripts run as subprocesses, as in tests/cli/test_commands.py."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from backend_decryptor.store import Store
from protected_nn.api import ProtectOptions, protect
from protected_nn.errors import PlanError, ProtectedNNError
from tests.support.op_cases import N, _rand, make_model
from tests.support.cli import BACKEND, EDGE, owner_key, run
from tests.support.tiny_models import square_model


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """tiny.onnx (Gemm 8->4, x*x) with an unused initializer (onnxruntime warns about it),
    protected with the default calibration, exported."""
    tmp = tmp_path_factory.mktemp("newcomer")
    path, oracle = square_model(tmp)
    model = onnx.load(path)
    model.graph.initializer.append(numpy_helper.from_array(np.ones(3, np.float32), "unused"))
    onnx.save(model, tmp / "m.onnx")
    proc = run(BACKEND, "protect", str(tmp / "m.onnx"), "--model-id", "m", "--store", str(tmp / "s"))
    run(BACKEND, "export", "m", "--out", str(tmp / "m.bundle"), "--store", str(tmp / "s"))
    return tmp, proc, oracle


def test_protect_prints_and_records_default_calibration(deployed):
    tmp, proc, _ = deployed
    assert "calibrated input range: [0, 1] (8 uniform samples in [0, 1])" in proc.stdout
    report = Store(tmp / "s").report("m")
    assert report["calibration"]["input_range"] == [0.0, 1.0]
    assert report["calibration"]["description"] == "8 uniform samples in [0, 1]"


def test_protect_output_has_no_onnxruntime_warnings(deployed):
    _, proc, _ = deployed
    assert "onnxruntime" not in proc.stderr and "\x1b[" not in proc.stderr + proc.stdout


def test_missing_card_warns_that_the_backend_will_refuse(deployed):
    _, proc, _ = deployed
    assert "no model card 'outputs'" in proc.stderr and "--card" in proc.stderr


def test_input_range_flag_calibrates_there(tmp_path):
    path, _ = square_model(tmp_path)
    proc = run(BACKEND, "protect", str(path), "--model-id", "r", "--store", str(tmp_path / "s"),
               "--input-range", "0,255")
    assert "calibrated input range: [0, 255] (8 uniform samples in [0, 255])" in proc.stdout
    assert Store(tmp_path / "s").report("r")["calibration"]["input_range"] == [0.0, 255.0]
    bad = run(BACKEND, "protect", str(path), "--model-id", "r", "--store", str(tmp_path / "s"),
              "--input-range", "5,1", ok=False)
    assert "--input-range" in bad.stderr and "LO < HI" in bad.stderr


def test_calibration_file_is_named_with_its_range(tmp_path):
    path, _ = square_model(tmp_path)
    cal = np.random.default_rng(3).uniform(-2.0, 2.0, (5, 1, 8)).astype(np.float32)
    np.save(tmp_path / "cal.npy", cal)
    proc = run(BACKEND, "protect", str(path), "--model-id", "f", "--store", str(tmp_path / "s"),
               "--calibration", str(tmp_path / "cal.npy"))
    lo, hi = float(cal.min()), float(cal.max())
    assert f"calibrated input range: [{lo:g}, {hi:g}] (5 input(s) from {tmp_path / 'cal.npy'}" in proc.stdout
    both = run(BACKEND, "protect", str(path), "--model-id", "f", "--store", str(tmp_path / "s"),
               "--calibration", str(tmp_path / "cal.npy"), "--input-range", "0,1", ok=False)
    assert "not both" in both.stderr


def test_input_outside_the_range_warns_and_its_result_is_named_as_such(deployed):
    tmp, _, _ = deployed
    np.save(tmp / "big.npy", np.random.default_rng(1).uniform(0, 255, (1, 8)).astype(np.float32))
    proc = run(EDGE, "infer", *owner_key(tmp / "s"), "--bundle", str(tmp / "m.bundle"), str(tmp / "big.npy"), "--out", str(tmp / "rbig"))
    assert "outside the calibrated input range [0, 1]" in proc.stderr
    dec = run(BACKEND, "decrypt", "m", str(tmp / "rbig"), "--out", str(tmp / "y.npy"),
              "--store", str(tmp / "s"), ok=False)
    assert "likely cause is an input outside the range the model was calibrated on [0, 1]" in dec.stderr


def test_input_inside_the_range_does_not_warn(deployed):
    tmp, _, _ = deployed
    np.save(tmp / "ok.npy", np.full((1, 8), 0.5, np.float32))
    proc = run(EDGE, "infer", *owner_key(tmp / "s"), "--bundle", str(tmp / "m.bundle"), str(tmp / "ok.npy"), "--out", str(tmp / "rok"))
    assert "calibrated" not in proc.stderr


def test_infer_takes_a_batch_shaped_like_protects_calibration(deployed):
    """(N, 8) for a (1, 8) model, as `protect --calibration` takes it (like (N, C, H, W))."""
    tmp, _, oracle = deployed
    xs = np.random.default_rng(2).uniform(0, 1, (3, 8)).astype(np.float32)
    np.save(tmp / "batch.npy", xs)
    run(EDGE, "infer", *owner_key(tmp / "s"), "--bundle", str(tmp / "m.bundle"), str(tmp / "batch.npy"), "--out", str(tmp / "rb"))
    assert len(list((tmp / "rb").iterdir())) == 3
    run(BACKEND, "decrypt", "m", str(tmp / "rb"), "--out", str(tmp / "yb.npy"), "--store", str(tmp / "s"))
    y = np.load(tmp / "yb.npy")
    expected = np.stack([oracle(x[None]) for x in xs])
    assert y.shape == expected.shape
    assert np.max(np.abs(y - expected)) <= 1e-2 * np.ptp(expected)


@pytest.mark.parametrize("content,kind", [(b"0.1 0.2 0.3\n", "a text file"), (b"PK\x03\x04rest", "an .npz archive")])
def test_a_non_npy_file_gets_a_clear_message(deployed, tmp_path, content, kind):
    tmp, _, _ = deployed
    (tmp_path / "x.npy").write_bytes(content)
    proc = run(EDGE, "infer", *owner_key(tmp / "s"), "--bundle", str(tmp / "m.bundle"), str(tmp_path / "x.npy"),
               "--out", str(tmp_path / "r"), ok=False)
    assert f"is {kind}, not a .npy array" in proc.stderr and "pickle" not in proc.stderr
    proc = run(BACKEND, "protect", str(tmp / "m.onnx"), "--model-id", "m2", "--store", str(tmp_path / "s"),
               "--calibration", str(tmp_path / "x.npy"), ok=False)
    assert f"calibration file {tmp_path / 'x.npy'} is {kind}" in proc.stderr


def test_failed_protect_leaves_no_store(tmp_path):
    model = make_model([N("Softmax", ["x"], ["y"])], (1, 4))
    onnx.save(model, tmp_path / "soft.onnx")
    proc = run(BACKEND, "protect", str(tmp_path / "soft.onnx"), "--model-id", "soft",
               "--store", str(tmp_path / "new-store"), ok=False)
    assert "Softmax" in proc.stderr
    assert not (tmp_path / "new-store").exists()


def test_invalid_card_in_onnx_metadata_is_refused_before_protecting(tmp_path):
    path, _ = square_model(tmp_path)
    model = onnx.load(path)
    helper.set_model_props(model, {"fhe_edge.outputs": json.dumps([{"name": "c", "index": -1, "kind": "count"}])})
    onnx.save(model, tmp_path / "carded.onnx")
    proc = run(BACKEND, "protect", str(tmp_path / "carded.onnx"), "--model-id", "c",
               "--store", str(tmp_path / "s"), ok=False)
    assert "model card outputs.0.index" in proc.stderr and "fhe_edge" in proc.stderr
    assert "Fidelity" not in proc.stdout and not (tmp_path / "s").exists()


# ------------------------------------------------------------------ fidelity and plan hints (api)

def _relu_net():
    c = {"w1": _rand(1, 4, 1, 3, 3), "w2": _rand(2, 4, 4, 3, 3), "fc": _rand(3, 3, 64)}
    nodes = [N("Conv", ["x", "w1"], ["c1"]), N("Relu", ["c1"], ["r1"], name="relu1"),
             N("Conv", ["r1", "w2"], ["c2"]), N("Mul", ["c2", "c2"], ["s"]),
             N("Flatten", ["s"], ["f"]), N("Gemm", ["f", "fc"], ["y"], transB=1)]
    return make_model(nodes, (1, 1, 8, 8), c)


def _maxpool_net():
    c = {"w1": _rand(1, 4, 1, 3, 3), "w2": _rand(4, 4, 4, 1, 1), "fc": _rand(3, 3, 64)}
    nodes = [N("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]), N("Mul", ["c1", "c1"], ["s"]),
             N("MaxPool", ["s"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
             N("Conv", ["p", "w2"], ["c2"]), N("Flatten", ["c2"], ["f"]), N("Gemm", ["f", "fc"], ["y"], transB=1)]
    return make_model(nodes, (1, 1, 8, 8), c)


def test_fitted_activation_failure_names_the_layer_and_the_remedies():
    with pytest.raises(ProtectedNNError) as err:
        protect(_relu_net(), options=ProtectOptions(poly_degree=2, tolerance=1e-3))
    msg = str(err.value).split("\n\n")[0]
    assert "largest error: layer 'r1' (Relu node 'relu1')" in msg
    assert "backend-decryptor adapt MODEL.onnx --data X.npy --out ADAPTED.onnx" in msg
    assert "--tolerance" in msg and "--poly-degree" in msg


def test_maxpool_failure_gets_the_maxpool_hint_not_the_polynomial_one():
    with pytest.raises(ProtectedNNError) as err:
        protect(_maxpool_net(), options=ProtectOptions(tolerance=1e-3))
    msg = str(err.value).split("\n\n")[0]
    assert "MaxPool node 'pool'" in msg and "mean-for-max" in msg and "AveragePool" in msg
    assert "--poly-degree" not in msg and "--tolerance" in msg


def test_too_many_levels_gets_a_remedy():
    c, nodes, prev = {"wo": _rand(99, 2, 6)}, [], "x"
    for i in range(4):
        c[f"w{i}"] = _rand(i + 1, 6, 6)
        nodes += [N("Gemm", [prev, f"w{i}"], [f"g{i}"], transB=1), N("Relu", [f"g{i}"], [f"r{i}"])]
        prev = f"r{i}"
    nodes.append(N("Gemm", [prev, "wo"], ["y"], transB=1))
    with pytest.raises(PlanError) as err:
        protect(make_model(nodes, (1, 6), c), options=ProtectOptions(poly_degree=8))
    msg = str(err.value)
    assert "levels" in msg and "lower --poly-degree" in msg and "backend-decryptor adapt" in msg
