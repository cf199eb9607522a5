"""The ops added for multi-branch and mobile CNNs (issue 9), UNDER ENCRYPTION, on cases onnx does
not ship (onnx has no grouped-conv node case; its edge/reflect/wrap Pad cases are int32): the
op cases of tests/support/op_cases.py through the whole protect -> infer -> decrypt path, and two small
networks that combine them (a MobileNet block, an Inception-style channel join)."""
from __future__ import annotations

import numpy as np
import pytest

from protected_nn import ir
from protected_nn.frontend import load_onnx
from protected_nn.onnx_backend import EncryptedBackend
from protected_nn.runtime.selfcheck import output_range
from tests.support.op_cases import CASES, N, _rand, _x, make_model, run_onnxruntime

ENCRYPTED_IDS = [
    "Conv-depthwise-3x3-stride2-pad1", "Conv-depthwise-multiplier2-nobias", "Conv-grouped-2-dilated",
    "Conv-pointwise-1x1-stride2", "Conv-pointwise-1x1-pads", "Conv-pointwise-1x1-grouped",
    "Pad-zeros-spatial", "Pad-reflect", "Pad-edge", "Pad-wrap", "Pad-value-axes-input",
    "Concat-channels-two-branches-and-const", "ReduceMean-spatial-no-keepdims-axes-input",
    "Clip-relu6", "Clip-bounds-never-reached-identity",
]
_BY_ID = {c.id: c for c in CASES}


def _encrypted(model, x) -> np.ndarray:
    return EncryptedBackend.run_model(model, [x])[0]


def _fit_error(model, x) -> float:
    graph = load_onnx(model, calibration=x[None])
    return sum(l.fit_max_error for l in graph.layers if isinstance(l, ir.Poly))


@pytest.mark.parametrize("case_id", ENCRYPTED_IDS)
def test_new_op_case_under_encryption(case_id):
    model, x = _BY_ID[case_id].build()
    ref = run_onnxruntime(model, x)
    y = _encrypted(model, x)
    assert y.shape == ref.shape
    bound = _fit_error(model, x) / output_range(ref) + 1e-3
    assert np.max(np.abs(y - ref)) / output_range(ref) <= bound


def _mobilenet_block():
    """3x16x16: conv 8 stride 2 + ReLU6, depthwise 3x3 + ReLU6, pointwise to 12, spatial mean,
    dense to 3 (torchvision's MobileNetV2 block shape, small)."""
    c = {"w1": _rand(1, 8, 3, 3, 3) * 0.5, "b1": _rand(2, 8), "dw": _rand(3, 8, 1, 3, 3),
         "db": _rand(4, 8), "pw": _rand(5, 12, 8, 1, 1) * 0.5, "fc": _rand(6, 3, 12),
         "lo": np.float32(0.0), "hi": np.float32(6.0), "ax": np.array([2, 3], np.int64)}
    nodes = [N("Conv", ["x", "w1", "b1"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1]),
             N("Clip", ["c1", "lo", "hi"], ["r1"]),
             N("Conv", ["r1", "dw", "db"], ["c2"], pads=[1, 1, 1, 1], group=8),
             N("Clip", ["c2", "lo", "hi"], ["r2"]),
             N("Conv", ["r2", "pw"], ["c3"]),
             N("ReduceMean", ["c3", "ax"], ["g"], keepdims=0),
             N("Gemm", ["g", "fc"], ["y"], transB=1)]
    return make_model(nodes, (1, 3, 16, 16), c, opset=18), _x((1, 3, 16, 16), lo=0.0, hi=1.0)


def _inception_join():
    """Two branches from one input (3x3 conv; zero-Pad + 1x1 conv), concatenated on channels,
    squared, global mean, dense: a Concat of two encrypted tensors feeding a non-linear layer."""
    c = {"a": _rand(1, 3, 2, 3, 3), "b": _rand(2, 2, 2, 1, 1), "p": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64),
         "fc": _rand(3, 2, 5)}
    nodes = [N("Conv", ["x", "a"], ["ba"]),
             N("Pad", ["x", "p"], ["xp"]), N("Conv", ["xp", "b"], ["bb"], strides=[1, 1]),
             N("Slice", ["bb", "s", "e", "ax"], ["bbs"]),
             N("Concat", ["ba", "bbs"], ["j"], axis=1),
             N("Mul", ["j", "j"], ["sq"]), N("GlobalAveragePool", ["sq"], ["g"]),
             N("Flatten", ["g"], ["f"]), N("Gemm", ["f", "fc"], ["y"], transB=1)]
    c.update({"s": np.array([2, 2], np.int64), "e": np.array([-2, -2], np.int64), "ax": np.array([2, 3], np.int64)})
    return make_model(nodes, (1, 2, 6, 6), c), _x((1, 2, 6, 6))


@pytest.mark.parametrize("build", [_mobilenet_block, _inception_join], ids=["mobilenet", "inception"])
def test_small_networks_under_encryption_match_their_ir(build):
    """The encrypted result equals the IR's plaintext semantics (exact ops + the recorded
    polynomials) to CKKS precision, and the IR is within its fit errors of onnxruntime."""
    model, x = build()
    graph = load_onnx(model, calibration=x[None])
    plain = ir.evaluate_plain(graph, x)
    ref = run_onnxruntime(model, x)
    y = _encrypted(model, x)
    assert y.shape == ref.shape == plain.shape
    assert np.max(np.abs(y - plain)) / output_range(ref) <= 1e-3
    if not any(isinstance(l, ir.Poly) for l in graph.layers):
        assert np.max(np.abs(y - ref)) / output_range(ref) <= 1e-3
