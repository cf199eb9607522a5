"""Per-op test cases, keyed by ONNX op name, shared by every backend's tests (plaintext IR now,
the encrypted runtime later). Each case builds a tiny ONNX model with onnx.helper and an input.

- `exact` cases must match onnxruntime to float precision.
- `approximate` cases (activations) replace a non-polynomial op: compare within the fit error
  the IR records (`ir.Poly.fit_max_error`), calibrating on the test input.
- `reference` (MaxPool) builds the model whose onnxruntime output the lowering reproduces by
  design (the documented approximation), to compare with instead of the case's own model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


@dataclass
class OpCase:
    op: str
    name: str
    build: Callable[[], tuple[onnx.ModelProto, np.ndarray]]
    approximate: bool = False
    reference: Callable[[], onnx.ModelProto] | None = None

    @property
    def id(self) -> str:
        return f"{self.op}-{self.name}"


def make_model(nodes, input_shape, consts: dict | None = None, opset: int = OPSET) -> onnx.ModelProto:
    """Graph with input 'x' (float32, input_shape), output 'y' (shape left to inference)."""
    inits = [numpy_helper.from_array(np.asarray(v), name=k) for k, v in (consts or {}).items()]
    graph = helper.make_graph(nodes, "case", [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    # the output's shape is filled in by onnx's own shape inference (the checker requires one)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    model.graph.output[0].CopyFrom(inferred.graph.output[0])
    onnx.checker.check_model(model, full_check=True)
    return model


def run_onnxruntime(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0]


def _rand(seed: int, *shape, lo=-1.0, hi=1.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(lo, hi, size=shape).astype(np.float32)


def _x(shape, seed=1, lo=-1.0, hi=1.0) -> np.ndarray:
    return _rand(seed, *shape, lo=lo, hi=hi)


N = helper.make_node
CASES: list[OpCase] = []


def case(op: str, name: str, approximate: bool = False, reference=None):
    def register(fn):
        CASES.append(OpCase(op, name, fn, approximate, reference))
        return fn
    return register


# ---- Conv -----------------------------------------------------------------------------------
def _conv(shape, wshape, with_bias=True, **attrs):
    inputs = ["x", "w", "b"] if with_bias else ["x", "w"]
    consts = {"w": _rand(2, *wshape)}
    if with_bias:
        consts["b"] = _rand(3, wshape[0])
    return make_model([N("Conv", inputs, ["y"], **attrs)], shape, consts), _x(shape)


case("Conv", "3x3-pad1-bias")(lambda: _conv((1, 2, 8, 8), (4, 2, 3, 3), pads=[1, 1, 1, 1]))
case("Conv", "stride2-asympad-nobias")(lambda: _conv((1, 3, 9, 7), (5, 3, 3, 3), False, strides=[2, 2], pads=[1, 0, 2, 1]))
case("Conv", "dilation2-rect-kernel")(lambda: _conv((1, 2, 10, 9), (3, 2, 2, 3), dilations=[2, 2], strides=[1, 2]))
case("Conv", "same-upper-stride2")(lambda: _conv((1, 1, 7, 7), (2, 1, 4, 4), auto_pad="SAME_UPPER", strides=[2, 2]))
case("Conv", "same-lower")(lambda: _conv((1, 1, 6, 6), (2, 1, 2, 2), auto_pad="SAME_LOWER"))
case("Conv", "1x1-valid")(lambda: _conv((1, 4, 5, 5), (3, 4, 1, 1), auto_pad="VALID", kernel_shape=[1, 1]))
case("Conv", "tenseal-7x7-stride3")(lambda: _conv((1, 1, 28, 28), (4, 1, 7, 7), strides=[3, 3]))
# grouped / depthwise / pointwise (onnx ships no node case for group > 1)
case("Conv", "depthwise-3x3-stride2-pad1")(lambda: _conv((1, 4, 9, 9), (4, 1, 3, 3), strides=[2, 2], pads=[1, 1, 1, 1], group=4))
case("Conv", "depthwise-multiplier2-nobias")(lambda: _conv((1, 3, 6, 6), (6, 1, 3, 3), False, pads=[1, 1, 1, 1], group=3))
case("Conv", "grouped-2-dilated")(lambda: _conv((1, 4, 8, 8), (6, 2, 3, 3), dilations=[2, 1], group=2))
case("Conv", "pointwise-1x1-stride2")(lambda: _conv((1, 4, 7, 7), (5, 4, 1, 1), strides=[2, 2]))
case("Conv", "pointwise-1x1-pads")(lambda: _conv((1, 3, 4, 5), (2, 3, 1, 1), pads=[1, 0, 2, 1]))
case("Conv", "pointwise-1x1-grouped")(lambda: _conv((1, 6, 4, 4), (4, 3, 1, 1), group=2))

# ---- Gemm / MatMul ---------------------------------------------------------------------------
case("Gemm", "transB-bias")(lambda: (make_model([N("Gemm", ["x", "w", "c"], ["y"], transB=1)], [1, 6],
                                                {"w": _rand(2, 4, 6), "c": _rand(3, 4)}), _x((1, 6))))
case("Gemm", "alpha-beta-2dC")(lambda: (make_model([N("Gemm", ["x", "w", "c"], ["y"], alpha=0.5, beta=-2.0)],
                                                   [1, 5], {"w": _rand(2, 5, 3), "c": _rand(3, 1, 3)}), _x((1, 5))))
case("Gemm", "transA-noC")(lambda: (make_model([N("Gemm", ["x", "w"], ["y"], transA=1)], [1, 5],
                                               {"w": _rand(2, 1, 3)}), _x((1, 5))))
case("Gemm", "const-A-transB-encrypted-B")(lambda: (make_model(
    [N("Gemm", ["a", "x", "c"], ["y"], transB=1, beta=0.25)], [1, 4],
    {"a": _rand(2, 3, 4), "c": _rand(3, 3, 1)}), _x((1, 4))))
case("MatMul", "row-times-const")(lambda: (make_model([N("MatMul", ["x", "w"], ["y"])], [1, 7],
                                                      {"w": _rand(2, 7, 3)}), _x((1, 7))))
case("MatMul", "4d-times-const")(lambda: (make_model([N("MatMul", ["x", "w"], ["y"])], [1, 2, 3, 4],
                                                     {"w": _rand(2, 4, 5)}), _x((1, 2, 3, 4))))
case("MatMul", "batched-const-broadcast")(lambda: (make_model([N("MatMul", ["x", "w"], ["y"])], [1, 3, 4],
                                                              {"w": _rand(2, 2, 1, 4, 5)}), _x((1, 3, 4))))
case("MatMul", "times-const-vector")(lambda: (make_model([N("MatMul", ["x", "w"], ["y"])], [1, 2, 4],
                                                         {"w": _rand(2, 4)}), _x((1, 2, 4))))
case("MatMul", "vector-input-leading-dim-3")(lambda: (make_model([N("MatMul", ["x", "w"], ["y"])], [3],
                                                                 {"w": _rand(2, 3, 2)}), _x((3,))))
case("MatMul", "const-times-2d")(lambda: (make_model([N("MatMul", ["w", "x"], ["y"])], [1, 3],
                                                     {"w": _rand(2, 4, 1)}), _x((1, 3))))

# ---- BatchNormalization -----------------------------------------------------------------------
def _bn(shape, eps=1e-5):
    C = shape[1]
    consts = {"s": _rand(2, C), "bb": _rand(3, C), "m": _rand(4, C), "v": _rand(5, C, lo=0.1, hi=2.0)}
    return make_model([N("BatchNormalization", ["x", "s", "bb", "m", "v"], ["y"], epsilon=eps)], shape, consts), _x(shape)


case("BatchNormalization", "nchw")(lambda: _bn((1, 3, 4, 5)))
case("BatchNormalization", "nc-eps")(lambda: _bn((1, 6), eps=0.1))

# ---- pooling ---------------------------------------------------------------------------------
def _pool(op, shape, **attrs):
    return make_model([N(op, ["x"], ["y"], **attrs)], shape), _x(shape)


case("AveragePool", "2x2-stride2")(lambda: _pool("AveragePool", (1, 2, 8, 8), kernel_shape=[2, 2], strides=[2, 2]))
case("AveragePool", "pads-exclude")(lambda: _pool("AveragePool", (1, 2, 5, 6), kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
case("AveragePool", "pads-include")(lambda: _pool("AveragePool", (1, 2, 5, 6), kernel_shape=[3, 3], pads=[1, 2, 0, 1], count_include_pad=1))
case("AveragePool", "ceil-mode")(lambda: _pool("AveragePool", (1, 1, 5, 7), kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1))
case("AveragePool", "ceil-mode-include-pad")(lambda: _pool("AveragePool", (1, 1, 6, 5), kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=1))
case("AveragePool", "same-upper")(lambda: _pool("AveragePool", (1, 3, 7, 7), kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"))
case("GlobalAveragePool", "nchw")(lambda: _pool("GlobalAveragePool", (1, 3, 5, 4)))
case("GlobalMaxPool", "nchw", reference=lambda: _pool("GlobalAveragePool", (1, 3, 5, 4))[0])(
    lambda: _pool("GlobalMaxPool", (1, 3, 5, 4)))


# ---- reductions -------------------------------------------------------------------------------
def _reduce(op, shape, axes=None, opset=OPSET, as_input=False, **attrs):
    inputs, consts = ["x"], {}
    if axes is not None and as_input:
        inputs.append("axes")
        consts["axes"] = np.array(axes, np.int64)
    elif axes is not None:
        attrs["axes"] = axes
    return make_model([N(op, inputs, ["y"], **attrs)], shape, consts, opset=opset), _x(shape)


case("ReduceMean", "spatial-keepdims")(lambda: _reduce("ReduceMean", (1, 3, 4, 5), [2, 3]))
case("ReduceMean", "spatial-no-keepdims-axes-input")(lambda: _reduce("ReduceMean", (1, 3, 4, 5), [-2, -1], opset=18, as_input=True, keepdims=0))
case("ReduceMean", "all-axes-default")(lambda: _reduce("ReduceMean", (1, 2, 3)))
case("ReduceMean", "empty-axes-noop")(lambda: _reduce("ReduceMean", (1, 2, 3), [], opset=18, as_input=True, noop_with_empty_axes=1))
case("ReduceSum", "channels-axes-input")(lambda: _reduce("ReduceSum", (1, 3, 2, 2), [1], as_input=True, keepdims=0))
case("ReduceSumSquare", "spatial")(lambda: _reduce("ReduceSumSquare", (1, 2, 3, 3), [2, 3]))


def _avg_ref(shape, **attrs):
    return lambda: _pool("AveragePool", shape, **attrs)[0]


case("MaxPool", "2x2-stride2", reference=_avg_ref((1, 2, 6, 6), kernel_shape=[2, 2], strides=[2, 2]))(
    lambda: _pool("MaxPool", (1, 2, 6, 6), kernel_shape=[2, 2], strides=[2, 2]))
case("MaxPool", "3x3-pads", reference=_avg_ref((1, 1, 5, 5), kernel_shape=[3, 3], pads=[1, 1, 1, 1]))(
    lambda: _pool("MaxPool", (1, 1, 5, 5), kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
case("Transpose", "nchw-to-nhwc")(lambda: _pool("Transpose", (1, 2, 3, 4), perm=[0, 2, 3, 1]))
case("Transpose", "only-unit-axes")(lambda: _pool("Transpose", (1, 5, 1), perm=[2, 1, 0]))

# ---- elementwise arithmetic -------------------------------------------------------------------
def _conv_branch():   # an encrypted tensor other than x with x's shape (1, 2, 4, 4)
    return N("Conv", ["x", "cw"], ["t"], pads=[1, 1, 1, 1]), {"cw": _rand(7, 2, 2, 3, 3)}


def _binary(op, a, b, consts, shape=(1, 2, 4, 4), branch=False, extra=()):
    nodes, consts = [], dict(consts)
    if branch:
        node, c = _conv_branch()
        nodes.append(node)
        consts.update(c)
    nodes.append(N(op, [a, b] + list(extra), ["y"]))
    return make_model(nodes, shape, consts), _x(shape)


case("Add", "bias-broadcast")(lambda: _binary("Add", "x", "c", {"c": _rand(2, 2, 1, 1)}))
case("Add", "const-first-grows-shape")(lambda: _binary("Add", "c", "x", {"c": _rand(2, 3, 1, 1, 4)}))
case("Add", "residual")(lambda: _binary("Add", "x", "t", {}, branch=True))
case("Add", "broadcast-encrypted")(lambda: _residual_broadcast())
case("Sub", "minus-const")(lambda: _binary("Sub", "x", "c", {"c": _rand(2, 4)}))
case("Sub", "const-minus")(lambda: _binary("Sub", "c", "x", {"c": np.float32(0.5)}))
case("Sub", "encrypted")(lambda: _binary("Sub", "x", "t", {}, branch=True))
case("Sum", "three-with-const")(lambda: _binary("Sum", "x", "t", {"c": _rand(3, 1, 4)}, branch=True, extra=["c"]))
case("Sum", "leading-dim-3-input")(lambda: _binary("Sum", "x", "c", {"c": _rand(3, 4)}, shape=(3, 4)))
case("Sum", "one-encrypted")(lambda: _binary("Sum", "c", "x", {"c": _rand(3, 2, 1, 1)}))
case("Mul", "per-channel")(lambda: _binary("Mul", "x", "c", {"c": _rand(2, 2, 1, 1)}))
case("Mul", "const-scalar-first")(lambda: _binary("Mul", "c", "x", {"c": np.float32(-3.0)}))
case("Mul", "square")(lambda: _binary("Mul", "x", "x", {}))
case("Div", "by-const")(lambda: _binary("Div", "x", "c", {"c": _rand(2, 4, lo=0.5, hi=2.0)}))
case("Pow", "square")(lambda: _binary("Pow", "x", "e", {"e": np.float32(2.0)}))
case("Pow", "cube-exact-poly")(lambda: _binary("Pow", "x", "e", {"e": np.int64(3)}))
case("Pow", "zero")(lambda: _binary("Pow", "x", "e", {"e": np.float32(0.0)}))
case("Pow", "one")(lambda: _binary("Pow", "x", "e", {"e": np.array([1.0], np.float32)}))


case("Neg", "nchw")(lambda: _pool("Neg", (1, 2, 3, 3)))
case("Mean", "two-encrypted-one-const")(lambda: _binary("Mean", "x", "t", {"c": _rand(3, 4)}, branch=True, extra=["c"]))
case("Mean", "one-encrypted")(lambda: _binary("Mean", "x", "c", {"c": _rand(3, 2, 1, 1)}))


def _residual_broadcast():
    """x (1,2,4,4) + GlobalAveragePool(x) (1,2,1,1): the encrypted operand is broadcast."""
    nodes = [N("GlobalAveragePool", ["x"], ["g"]), N("Add", ["x", "g"], ["y"])]
    return make_model(nodes, (1, 2, 4, 4)), _x((1, 2, 4, 4))


# ---- shape-only ops ---------------------------------------------------------------------------
def _then_gemm(nodes, shape, flat):
    """Shape op(s) producing 'f' (flat size `flat`) followed by a dense layer, like a CNN head."""
    nodes = nodes + [N("Gemm", ["f", "w"], ["y"], transB=1)]
    return make_model(nodes, shape, {"w": _rand(9, 3, flat), **_CONSTS}), _x(shape)


_CONSTS = {"s1": np.array([1, -1], np.int64), "s0": np.array([0, 0, -1], np.int64),
           "ax0": np.array([0], np.int64), "ax2": np.array([2, -1], np.int64)}

case("Flatten", "axis1-then-gemm")(lambda: _then_gemm([N("Flatten", ["x"], ["f"])], (1, 2, 3, 4), 24))
case("Flatten", "axis2")(lambda: _pool("Flatten", (1, 2, 3, 4), axis=2))
case("Reshape", "to-row-then-gemm")(lambda: _then_gemm([N("Reshape", ["x", "s1"], ["f"])], (1, 2, 3, 4), 24))
case("Reshape", "zero-copies-dim")(lambda: (make_model([N("Reshape", ["x", "s0"], ["y"])], (1, 2, 3, 4), _CONSTS), _x((1, 2, 3, 4))))
case("Identity", "then-mul")(lambda: (make_model([N("Identity", ["x"], ["i"]), N("Mul", ["i", "c"], ["y"])], (1, 3),
                                                 {"c": _rand(2, 3)}), _x((1, 3))))
case("Identity", "alone")(lambda: _pool("Identity", (1, 4)))
case("Dropout", "ratio-input")(lambda: (make_model([N("Dropout", ["x", "r"], ["y"])], (1, 2, 3), {"r": np.float32(0.5)}), _x((1, 2, 3))))
case("Squeeze", "batch-axis")(lambda: (make_model([N("Squeeze", ["x", "ax0"], ["y"])], (1, 5), _CONSTS), _x((1, 5))))
case("Squeeze", "all-unit-axes")(lambda: _pool("Squeeze", (1, 3, 1, 1)))
case("Unsqueeze", "two-axes")(lambda: (make_model([N("Unsqueeze", ["x", "ax2"], ["y"])], (1, 5), _CONSTS), _x((1, 5))))
case("Shape", "reshape-back")(lambda: (make_model([N("Flatten", ["x"], ["f"]), N("Mul", ["f", "two"], ["g"]),
                                                   N("Shape", ["x"], ["s"]), N("Reshape", ["g", "s"], ["y"])],
                                                  (1, 2, 3), {"two": np.float32(2.0)}), _x((1, 2, 3))))

# ---- moving / repeating values ----------------------------------------------------------------
def _indexing(op, shape, consts, names, opset=OPSET, **attrs):
    return make_model([N(op, ["x", *names], ["y"], **attrs)], shape, consts, opset=opset), _x(shape)


def _pad(shape, pads, value=None, axes=None, opset=OPSET, **attrs):
    consts, names = {"p": np.array(pads, np.int64)}, ["p"]
    if value is not None or axes is not None:
        names.append("v" if value is not None else "")
        if value is not None:
            consts["v"] = np.float32(value)
    if axes is not None:
        names.append("a")
        consts["a"] = np.array(axes, np.int64)
    return _indexing("Pad", shape, consts, names, opset=opset, **attrs)


case("Pad", "zeros-spatial")(lambda: _pad((1, 2, 4, 4), [0, 0, 1, 2, 0, 0, 2, 1]))
case("Pad", "value-axes-input")(lambda: _pad((1, 2, 3, 4), [1, 0, 2, 1], value=0.5, axes=[2, -1], opset=18))
case("Pad", "negative-crops")(lambda: _pad((1, 2, 5, 5), [0, 0, -1, 1, 0, 0, 1, -2]))
case("Pad", "reflect")(lambda: _pad((1, 2, 4, 5), [0, 0, 2, 1, 0, 0, 1, 3], mode="reflect"))
case("Pad", "edge")(lambda: _pad((1, 2, 3, 3), [0, 0, 2, 2, 0, 0, 1, 1], mode="edge"))
case("Pad", "wrap")(lambda: _pad((1, 1, 3, 4), [0, 0, 1, 2, 0, 0, 2, 1], opset=19, mode="wrap"))
case("Slice", "spatial-crop-step2")(lambda: _indexing("Slice", (1, 3, 6, 6), {
    "s": np.array([1, 0], np.int64), "e": np.array([6, -1], np.int64), "a": np.array([2, 3], np.int64),
    "st": np.array([2, 1], np.int64)}, ["s", "e", "a", "st"]))
case("Slice", "channels-reversed")(lambda: _indexing("Slice", (1, 4, 2, 2), {
    "s": np.array([-1], np.int64), "e": np.array([-1000], np.int64), "a": np.array([1], np.int64),
    "st": np.array([-1], np.int64)}, ["s", "e", "a", "st"]))
case("Gather", "channels")(lambda: _indexing("Gather", (1, 4, 2, 3), {"i": np.array([3, 0, -1], np.int64)}, ["i"], axis=1))
case("Expand", "channel-broadcast")(lambda: _indexing("Expand", (1, 1, 3, 3), {"s": np.array([1, 4, 1, 1], np.int64)}, ["s"]))
case("Tile", "spatial")(lambda: _indexing("Tile", (1, 2, 2, 3), {"r": np.array([1, 1, 2, 3], np.int64)}, ["r"]))
case("DepthToSpace", "dcr")(lambda: _pool("DepthToSpace", (1, 8, 2, 3), blocksize=2))
case("DepthToSpace", "crd")(lambda: _pool("DepthToSpace", (1, 8, 2, 3), blocksize=2, mode="CRD"))
case("SpaceToDepth", "blocksize2")(lambda: _pool("SpaceToDepth", (1, 2, 4, 6), blocksize=2))


def _concat(axis, shape=(1, 2, 4, 4)):
    """Channel join of x, a conv branch t (x's shape), a constant and t again."""
    node, consts = _conv_branch()
    consts["c"] = _rand(4, *[1 if d == axis else n for d, n in enumerate(shape)])
    return make_model([node, N("Concat", ["x", "t", "c", "t"], ["y"], axis=axis)], shape, consts), _x(shape)


case("Concat", "channels-two-branches-and-const")(lambda: _concat(1))
case("Concat", "width-negative-axis")(lambda: _concat(-1))
case("Concat", "one-encrypted-with-const")(lambda: _indexing("Concat", (1, 2, 3), {"c": _rand(5, 1, 4, 3)}, ["c"], axis=1))

# ---- activations (polynomial approximations) --------------------------------------------------
def _act(op, lo=-3.0, hi=3.0, opset=OPSET, **attrs):
    return lambda: (make_model([N(op, ["x"], ["y"], **attrs)], (1, 2, 5, 5), opset=opset),
                    _x((1, 2, 5, 5), lo=lo, hi=hi))


for _op in ("Relu", "Sigmoid", "Tanh", "Softplus"):
    case(_op, "symmetric", approximate=True)(_act(_op))
case("Relu", "positive-range", approximate=True)(_act("Relu", lo=0.5, hi=4.0))
case("Sigmoid", "wide", approximate=True)(_act("Sigmoid", lo=-8.0, hi=8.0))
case("LeakyRelu", "alpha0.1", approximate=True)(_act("LeakyRelu", alpha=0.1))
case("LeakyRelu", "default-alpha", approximate=True)(_act("LeakyRelu", lo=-1.0, hi=2.0))
for _op in ("Elu", "Selu", "HardSigmoid", "HardSwish", "Softsign"):
    case(_op, "symmetric", approximate=True)(_act(_op))
case("Mish", "symmetric", approximate=True)(_act("Mish", opset=18))
case("Elu", "alpha0.5", approximate=True)(_act("Elu", alpha=0.5))
case("HardSigmoid", "alpha-beta", approximate=True)(_act("HardSigmoid", alpha=0.3, beta=0.4))


def _gelu(approx):
    return lambda: (make_model([N("Gelu", ["x"], ["y"], approximate=approx)], (1, 2, 5, 5), opset=20),
                    _x((1, 2, 5, 5), lo=-3.0, hi=3.0))


case("Gelu", "erf", approximate=True)(_gelu("none"))
case("Gelu", "tanh", approximate=True)(_gelu("tanh"))


def _clip(lo=None, hi=None, x_lo=-3.0, x_hi=9.0):
    names, consts = ["x"], {}
    for key, v in (("lo", lo), ("hi", hi)):
        names.append(key if v is not None else "")
        if v is not None:
            consts[key] = np.float32(v)
    while names[-1] == "":
        names.pop()
    return lambda: (make_model([N("Clip", names, ["y"])], (1, 2, 5, 5), consts),
                    _x((1, 2, 5, 5), lo=x_lo, hi=x_hi))


case("Clip", "relu6", approximate=True)(_clip(0.0, 6.0))
case("Clip", "min-only", approximate=True)(_clip(lo=-1.0, x_lo=-3.0, x_hi=3.0))
case("Clip", "max-only", approximate=True)(_clip(hi=1.0, x_lo=-3.0, x_hi=3.0))
case("Clip", "bounds-never-reached-identity")(_clip(-10.0, 10.0, x_lo=-1.0, x_hi=1.0))
case("Clip", "no-bounds-identity")(_clip())


OP_CASES: dict[str, list[OpCase]] = {}
for _c in CASES:
    OP_CASES.setdefault(_c.op, []).append(_c)
