"""Whole models through load_onnx: opset upgrade, symbolic batch, metadata, constant folding,
fusion, small CNNs against onnxruntime, calibration handling, polynomial fits, conv speed."""
from __future__ import annotations

import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from protected_nn import ir
from protected_nn.frontend import load_onnx
from protected_nn.frontend.ops.activations import fit_polynomial
from tests.support.op_cases import N, _rand, _x, make_model, run_onnxruntime


def _kinds(graph: ir.Graph) -> list[str]:
    return [type(layer).__name__ for layer in graph.layers]


def _square_cnn() -> onnx.ModelProto:
    """CryptoNets-like with BN, a residual join, average pooling and a dense head (exact ops)."""
    nodes = [N("Conv", ["x", "w1", "b1"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1]),
             N("BatchNormalization", ["c1", "s", "bb", "m", "v"], ["n1"]),
             N("Mul", ["n1", "n1"], ["a1"]),
             N("Conv", ["a1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             N("Add", ["c2", "a1"], ["r"]),
             N("AveragePool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             N("Pow", ["p", "two"], ["a2"]),
             N("Flatten", ["a2"], ["f"]),
             N("Gemm", ["f", "wd", "bd"], ["y"], transB=1)]
    consts = {"w1": _rand(1, 4, 1, 3, 3), "b1": _rand(2, 4), "s": _rand(3, 4), "bb": _rand(4, 4),
              "m": _rand(5, 4), "v": _rand(6, 4, lo=0.5, hi=1.5), "w2": _rand(7, 4, 4, 3, 3),
              "two": np.float32(2.0), "wd": _rand(8, 10, 4 * 4 * 4), "bd": _rand(9, 10)}
    return make_model(nodes, (1, 1, 16, 16), consts)


def test_square_cnn_matches_onnxruntime_and_fuses_linear_chains():
    model, x = _square_cnn(), _x((1, 1, 16, 16), lo=0.0, hi=1.0)
    graph = load_onnx(model)
    np.testing.assert_allclose(ir.evaluate_plain(graph, x), run_onnxruntime(model, x), atol=1e-4, rtol=1e-4)
    # conv1+BN fused; conv2 and the residual Add stay apart; avgpool stays before Pow; head fused
    assert _kinds(graph) == ["Input", "Linear", "Square", "Linear", "Add", "Linear", "Square", "Linear"]
    assert graph.layers[1].sources == ["Conv_0", "BatchNormalization_1"]
    assert graph.output_shape == (1, 10)


def test_relu_cnn_error_is_small_and_fit_ranges_cover_the_calibration():
    nodes = [N("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]), N("Relu", ["c1"], ["a1"]),
             N("GlobalAveragePool", ["a1"], ["g"]), N("Flatten", ["g"], ["f"]),
             N("MatMul", ["f", "wd"], ["y"])]
    model = make_model(nodes, (1, 2, 8, 8), {"w1": _rand(1, 6, 2, 3, 3), "wd": _rand(2, 6, 3)})
    rng = np.random.default_rng(5)
    cal = rng.uniform(0, 1, size=(16, 1, 2, 8, 8)).astype(np.float32)
    graph = load_onnx(model, calibration=cal, poly_degree=8)
    poly = next(l for l in graph.layers if isinstance(l, ir.Poly))
    assert poly.op == "Relu" and poly.coeffs.shape == (9,)
    for x in cal[:4]:
        expected = run_onnxruntime(model, x)
        err = np.max(np.abs(ir.evaluate_plain(graph, x) - expected))
        # the mean over 64 pixels of poly errors, through a 6x3 dense layer
        assert err <= poly.fit_max_error * np.abs(_rand(2, 6, 3)).sum(axis=0).max() + 1e-5


def test_opset_11_model_is_upgraded():
    nodes = [N("Squeeze", ["x"], ["s"], axes=[0]), N("Unsqueeze", ["s"], ["u"], axes=[0]),
             N("Gemm", ["u", "w"], ["y"], transB=1)]
    model = make_model(nodes, (1, 5), {"w": _rand(1, 2, 5)}, opset=11)
    x = _x((1, 5))
    graph = load_onnx(model)
    np.testing.assert_allclose(ir.evaluate_plain(graph, x), run_onnxruntime(model, x), atol=1e-5)


def test_symbolic_batch_is_one_and_metadata_is_kept(tmp_path):
    graph = helper.make_graph([N("Mul", ["x", "c"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
                              [onnx.numpy_helper.from_array(np.array([1, 2, 3], np.float32), "c")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(model, {"labels": "a,b,c", "author": "test"})
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    loaded = load_onnx(path)
    assert loaded.input.shape == (1, 3) and loaded.output_shape == (1, 3)
    assert loaded.metadata == {"labels": "a,b,c", "author": "test"}
    assert loaded.input_name == "x"
    np.testing.assert_allclose(ir.evaluate_plain(loaded, np.ones((1, 3))).ravel(), [1, 2, 3])


def test_pytorch_style_flatten_is_folded_from_constants():
    """x.view(x.size(0), -1) exports as Shape/Gather/Unsqueeze/Concat/Reshape; Constant nodes."""
    nodes = [N("Shape", ["x"], ["shp"]),
             N("Constant", [], ["zero"], value=helper.make_tensor("z", TensorProto.INT64, [], [0])),
             N("Gather", ["shp", "zero"], ["n"], axis=0),
             N("Constant", [], ["ax"], value=helper.make_tensor("a", TensorProto.INT64, [1], [0])),
             N("Unsqueeze", ["n", "ax"], ["n1"]),
             N("Constant", [], ["m1"], value=helper.make_tensor("m", TensorProto.INT64, [1], [-1])),
             N("Concat", ["n1", "m1"], ["target"], axis=0),
             N("Reshape", ["x", "target"], ["f"]),
             N("Constant", [], ["w"], value=onnx.numpy_helper.from_array(_rand(3, 24, 4), "w")),
             N("MatMul", ["f", "w"], ["y"])]
    model = make_model(nodes, (1, 2, 3, 4))
    x = _x((1, 2, 3, 4))
    graph = load_onnx(model)
    assert _kinds(graph) == ["Input", "Linear"]
    np.testing.assert_allclose(ir.evaluate_plain(graph, x), run_onnxruntime(model, x), atol=1e-5)


def test_constant_subgraph_is_folded():
    """Ops outside the table fold when they only see constants: ReduceMean in its opset-13 form
    (axes attribute), Shape of a constant, Cast."""
    nodes = [N("ReduceMean", ["c"], ["m"], axes=[0], keepdims=0), N("Shape", ["c"], ["s"]),
             N("Cast", ["s"], ["sf"], to=TensorProto.FLOAT), N("Mul", ["x", "m"], ["t"]),
             N("Add", ["t", "sf"], ["y"])]
    model = make_model(nodes, (1, 2), {"c": np.array([[1.0, 2.0], [3.0, 6.0]], np.float32)}, opset=13)
    x = _x((1, 2))
    graph = load_onnx(model)
    assert _kinds(graph) == ["Input", "Linear"]
    np.testing.assert_allclose(ir.evaluate_plain(graph, x), run_onnxruntime(model, x), atol=1e-6)


def test_unused_branch_is_pruned_and_identity_model_keeps_one_layer():
    nodes = [N("Mul", ["x", "c"], ["dead"]), N("Relu", ["dead"], ["dead2"]), N("Add", ["x", "c"], ["y"])]
    graph = load_onnx(make_model(nodes, (1, 3), {"c": np.ones(3, np.float32)}))
    assert _kinds(graph) == ["Input", "Linear"] and not any(isinstance(l, ir.Poly) for l in graph.layers)
    ident = load_onnx(make_model([N("Identity", ["x"], ["y"])], (1, 4)))
    assert _kinds(ident) == ["Input", "Linear"]
    np.testing.assert_array_equal(ir.evaluate_plain(ident, np.arange(4.0)), np.arange(4.0).reshape(1, 4))


def test_fixed_leading_dimension_other_than_one_is_one_input():
    """A (3, 4) input (e.g. onnx's node tests) is one input; the IR's Input layer stores it as
    (1, 3, 4) because ir.Layer.size assumes a batch-first axis."""
    model = make_model([N("MatMul", ["x", "w"], ["y"])], (3, 4), {"w": _rand(2, 4, 2)})
    x = _x((3, 4))
    graph = load_onnx(model)
    assert graph.input.shape == (1, 3, 4) and graph.input.size == 12 and graph.output_shape == (3, 2)
    np.testing.assert_allclose(ir.evaluate_plain(graph, x), run_onnxruntime(model, x), atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 2, 3), (5, 1, 2, 3), (5, 2, 3)])
def test_calibration_accepts_one_input_a_stack_or_a_batch(shape):
    model = make_model([N("Relu", ["x"], ["y"])], (1, 2, 3))
    cal = np.linspace(-2.0, 3.0, int(np.prod(shape))).reshape(shape)
    poly = load_onnx(model, calibration=cal).layers[1]
    assert poly.fit_range == pytest.approx((-2.5, 3.5))   # measured range widened by 10 %


def test_default_calibration_uses_input_range_and_seed():
    model = make_model([N("Sigmoid", ["x"], ["y"])], (1, 50))
    a = load_onnx(model, input_range=(-4.0, 4.0), calibration_samples=4, seed=1).layers[1]
    b = load_onnx(model, input_range=(-4.0, 4.0), calibration_samples=4, seed=1).layers[1]
    assert np.array_equal(a.coeffs, b.coeffs)
    lo, hi = a.fit_range
    assert -4.8 <= lo < -3.5 and 3.5 < hi <= 4.8


@pytest.mark.parametrize("f,lo,hi", [(np.tanh, -3, 3), (lambda x: np.maximum(x, 0), -2, 5)])
def test_higher_degree_fits_better_and_error_is_measured(f, lo, hi):
    errors = []
    for degree in (2, 4, 8):
        coeffs, err = fit_polynomial(f, lo, hi, degree)
        grid = np.linspace(lo, hi, 777)
        true_err = np.max(np.abs(np.polynomial.polynomial.polyval(grid, coeffs) - f(grid)))
        assert coeffs.shape == (degree + 1,) and true_err <= err * 1.01 + 1e-12
        errors.append(err)
    assert errors[0] > errors[1] > errors[2]


def test_conv_lowering_is_vectorised_and_exact():
    """2x32x32 -> 8 channels 3x3, pad 1: ~147k nonzeros, built with index arithmetic."""
    model = make_model([N("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])], (1, 2, 32, 32),
                       {"w": _rand(1, 8, 2, 3, 3), "b": _rand(2, 8)})
    x = _x((1, 2, 32, 32))
    start = time.perf_counter()
    graph = load_onnx(model)
    elapsed = time.perf_counter() - start
    W = graph.layers[1].W
    # every output pixel reads 2*3*3 inputs except on the border rows/columns
    valid_per_axis = 3 * 32 - 2
    assert W.nnz == 8 * 2 * valid_per_axis ** 2
    assert elapsed < 3.0, f"load_onnx took {elapsed:.2f} s"
    np.testing.assert_allclose(ir.evaluate_plain(graph, x), run_onnxruntime(model, x), atol=1e-5)
