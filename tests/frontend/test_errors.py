"""Bad models and bad options: each a clear ProtectedNNError naming what was wrong."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from protected_nn.errors import InputError, ModelError, ProtectedNNError, UnsupportedOpError
from protected_nn.frontend import OP_TABLE, load_onnx
from tests.support.op_cases import N, _rand, make_model


def test_unsupported_op_names_op_node_and_lists_supported_ops():
    model = make_model([N("Softmax", ["x"], ["y"], name="head_softmax")], (1, 10))
    with pytest.raises(UnsupportedOpError) as err:
        load_onnx(model)
    msg = str(err.value)
    assert "'Softmax'" in msg and "head_softmax" in msg
    assert all(op in msg for op in OP_TABLE)


def test_op_from_another_domain_is_unsupported():
    model = make_model([N("Relu", ["x"], ["y"])], (1, 4))
    model.graph.node[0].domain = "com.example"
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(UnsupportedOpError, match="com.example::Relu"):
        load_onnx(model)


def test_two_inputs_are_rejected_by_name():
    graph = helper.make_graph([N("Add", ["a", "b"], ["y"])], "g",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3]) for n in "ab"],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ModelError, match=r"exactly one input.*\['a', 'b'\]"):
        load_onnx(model)


def test_two_outputs_are_rejected():
    graph = helper.make_graph([N("Relu", ["x"], ["y"]), N("Neg", ["x"], ["z"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3]) for n in "yz"])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ModelError, match="exactly one output"):
        load_onnx(model)


def test_matmul_with_non_constant_operand():
    nodes = [N("Mul", ["x", "c"], ["t"]), N("MatMul", ["x", "t"], ["y"], name="mm")]
    model = make_model(nodes, (1, 1), {"c": np.float32(2.0)})
    with pytest.raises(UnsupportedOpError, match=r"MatMul node 'mm'.*one operand must be a constant"):
        load_onnx(model)


def test_gemm_weight_computed_from_input_is_rejected():
    nodes = [N("Transpose", ["x"], ["t"]), N("Gemm", ["x", "t"], ["y"], name="g")]
    with pytest.raises(UnsupportedOpError, match="Gemm node 'g'"):
        load_onnx(make_model(nodes, (1, 1)))


@pytest.mark.parametrize("C,wshape,group,match", [
    (4, (4, 2, 3, 3), 3, r"attribute group=3 does not divide the 4 input and 4 output channels"),
    (4, (4, 1, 3, 3), 2, r"weight has 1 input channels per group.*group=2 give 2"),
    (2, (2, 1, 3, 3), 0, r"attribute group=0 must be a positive integer"),
])
def test_bad_group_conv_names_node_attribute_and_reason(C, wshape, group, match):
    model = make_model([N("Conv", ["x", "w"], ["y"], group=group, name="dw")], (1, C, 5, 5),
                       {"w": _rand(1, *wshape)}) if group else _unchecked_conv(C, wshape)
    with pytest.raises(UnsupportedOpError, match=r"Conv node 'dw': " + match):
        load_onnx(model)


def _unchecked_conv(C, wshape):
    """group=0: onnx's checker would refuse the model, so build it without the checker."""
    graph = helper.make_graph([N("Conv", ["x", "w"], ["y"], group=0, name="dw")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list("abcd"))],
                              [helper.make_tensor("w", TensorProto.FLOAT, wshape,
                                                  _rand(1, *wshape).reshape(-1))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("nodes,consts,match", [
    ([N("Pad", ["x", "p"], ["y"], mode="mirror", name="pd")], {"p": np.zeros(8, np.int64)},
     r"Pad node 'pd': attribute mode='mirror' is not supported \(constant, reflect, edge, wrap\)"),
    ([N("Pad", ["x", "p"], ["y"], mode="reflect", name="pd")],
     {"p": np.array([0, 0, -1, 0, 0, 0, 1, 0], np.int64)}, r"Pad node 'pd': negative pads.*mode='reflect'"),
    ([N("Pad", ["x", "p"], ["y"], name="pd")], {"p": np.zeros(3, np.int64)},
     r"Pad node 'pd': input pads has 3 values for 4 axes"),
    ([N("Gelu", ["x"], ["y"], approximate="fast", name="g")], {}, r"Gelu node 'g': attribute approximate='fast'"),
    ([N("Clip", ["x", "lo"], ["y"], name="c")], {"lo": np.zeros(3, np.float32)},
     r"Clip node 'c': input min must be one value"),
    ([N("Clip", ["x", "lo", "hi"], ["y"], name="c")], {"lo": np.float32(2.0), "hi": np.float32(1.0)},
     r"Clip node 'c': inputs min=2 > max=1 make the output the constant 1"),
    ([N("ReduceMean", ["x", "ax"], ["y"], name="r")], {"ax": np.array([4], np.int64)}, r"ReduceMean node 'r': axes \[4\] are invalid"),
    ([N("Concat", ["x", "c"], ["y"], axis=1, name="cc")], {"c": np.zeros((1, 2, 2, 3), np.float32)},
     r"Concat node 'cc': input shapes .* differ outside axis 1"),
    ([N("DepthToSpace", ["x"], ["y"], blocksize=2, name="d")], {}, r"DepthToSpace node 'd': attribute blocksize=2"),
])
def test_unsupported_attribute_names_node_attribute_and_reason(nodes, consts, match):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list("abcd"))],
                              [helper.make_tensor(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape,
                                                  v.reshape(-1)) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])   # unchecked
    with pytest.raises(UnsupportedOpError, match=match):
        load_onnx(model)


def test_conv_weight_must_be_constant():
    nodes = [N("Mul", ["w0", "x"], ["w"]), N("Conv", ["x", "w"], ["y"], name="c")]
    model = make_model(nodes, (1, 1, 3, 3), {"w0": np.ones((1, 1, 1, 1), np.float32)})
    with pytest.raises(UnsupportedOpError, match="weight 'w' depends on the model input"):
        load_onnx(model)


def test_3d_conv_is_rejected():
    model = make_model([N("Conv", ["x", "w"], ["y"])], (1, 1, 4, 4, 4), {"w": _rand(1, 1, 1, 2, 2, 2)})
    with pytest.raises(UnsupportedOpError, match="2-D"):
        load_onnx(model)


@pytest.mark.parametrize("nodes,consts,match", [
    ([N("Add", ["x", "c"], ["t"]), N("Mul", ["x", "t"], ["y"])], {"c": np.float32(1.0)},
     "two different encrypted"),
    ([N("Div", ["c", "x"], ["y"])], {"c": np.float32(1.0)}, "division by an encrypted"),
    ([N("Pow", ["x", "e"], ["y"])], {"e": np.float32(2.5)}, "exponent"),
    ([N("Pow", ["x", "e"], ["y"])], {"e": np.array([1.0, 2.0, 2.0], np.float32)}, "exponent"),  # per-column
    ([N("BatchNormalization", ["x", "s", "s", "s", "s"], ["y", "rm", "rv"], training_mode=1)],
     {"s": np.ones(2, np.float32)}, "training_mode"),
    ([N("Dropout", ["x", "r", "t"], ["y"])], {"r": np.float32(0.5), "t": np.array(True)}, "training_mode"),
])
def test_unsupported_variants(nodes, consts, match):
    with pytest.raises(UnsupportedOpError, match=match):
        load_onnx(make_model(nodes, (1, 2, 3, 3), consts))


def test_missing_file_and_garbage_bytes(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_onnx(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00definitely not protobuf\xff" * 10)
    with pytest.raises(ModelError, match="bad.onnx"):
        load_onnx(bad)
    with pytest.raises(ModelError):
        load_onnx(12345)


def test_symbolic_non_batch_dimension_is_rejected():
    graph = helper.make_graph([N("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "W"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ModelError, match="dimension 1 is symbolic"):
        load_onnx(model)


def test_integer_input_is_rejected():
    graph = helper.make_graph([N("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.INT64, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, [1, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ModelError, match="INT64"):
        load_onnx(model)


def test_output_independent_of_input_is_rejected():
    nodes = [N("Relu", ["x"], ["unused"]), N("Identity", ["c"], ["y"])]
    with pytest.raises(ModelError, match="does not depend on the input"):
        load_onnx(make_model(nodes, (1, 3), {"c": np.ones(3, np.float32)}))


def test_bad_calibration_shape_and_values():
    model = make_model([N("Relu", ["x"], ["y"])], (1, 2, 3))
    with pytest.raises(InputError, match=r"\(4, 5\) does not match the model input \(1, 2, 3\)"):
        load_onnx(model, calibration=np.zeros((4, 5)))
    with pytest.raises(InputError, match="finite"):
        load_onnx(model, calibration=np.full((1, 2, 3), np.nan))
    with pytest.raises(InputError, match="input_range"):
        load_onnx(model, input_range=(1.0, 0.0))


@pytest.mark.parametrize("degree", [0, -1, 2.5, True, 100])
def test_bad_poly_degree(degree):
    model = make_model([N("Relu", ["x"], ["y"])], (1, 3))
    with pytest.raises(ProtectedNNError, match="poly_degree"):
        load_onnx(model, poly_degree=degree)
