"""Write the trained (BN-folded) weights as an ONNX file with the fhe-edge metadata.

The graph is built with onnx.helper instead of torch.onnx so the op set is exactly what the
protected_nn frontend reads (Conv, Mul as x*x, AveragePool, Flatten, Gemm), the batch dimension is
a static 1, and the bytes depend only on the weights (no exporter version or timestamp inside).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from training.features import FRAME_INTERVAL_S, INPUT_SIZE, MAX_FRAME_GAP

OPSET = 17
INPUT_META = {"shape": [1, 2, INPUT_SIZE, INPUT_SIZE], "channels": "gray+motion", "scale": 1 / 255,
              "mean": 0, "std": 1, "resize": "area"}
OUTPUTS_META = [{"name": "crowd_count", "index": 0, "kind": "count"},
                {"name": "incident", "index": 1, "kind": "logit"}]
MOTION_META = {"order": "resize_then_absdiff", "frame_interval_s": FRAME_INTERVAL_S,
               "trained_gaps_frames": list(range(1, MAX_FRAME_GAP + 1)), "first_frame": "zeros"}
MODEL_CARD = ("Crowd-and-incident CNN for fhe-edge (trained on synthetic street scenes only). "
              "Input: 32x32 grayscale frame + |difference from the previous frame| (BGR->GRAY, "
              "INTER_AREA resize, /255). Outputs: [0] estimated number of people in view, "
              "[1] incident logit (sudden dispersal or a person down; sigmoid > 0.5 = incident). "
              "Square activations and average pooling only, for CKKS inference. See models/README.md.")


def build_onnx(w: dict[str, np.ndarray], extra_meta: dict[str, str] | None = None) -> onnx.ModelProto:
    channels, hidden = w["conv_w"].shape[0], w["fc1_w"].shape[0]
    pooled = channels * (INPUT_SIZE // 4) ** 2
    if w["fc1_w"].shape[1] != pooled or w["fc2_w"].shape != (2, hidden):
        raise ValueError(f"weights do not chain: conv {w['conv_w'].shape}, fc1 {w['fc1_w'].shape}, "
                         f"fc2 {w['fc2_w'].shape}")
    inits = [numpy_helper.from_array(np.ascontiguousarray(v, np.float32), name=k) for k, v in sorted(w.items())]
    nodes = [
        helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["conv"], name="conv",
                         kernel_shape=[5, 5], strides=[2, 2], pads=[2, 2, 2, 2]),
        helper.make_node("Mul", ["conv", "conv"], ["sq1"], name="square1"),
        helper.make_node("AveragePool", ["sq1"], ["pool"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc1_w", "fc1_b"], ["fc1"], name="fc1", transB=1),
        helper.make_node("Mul", ["fc1", "fc1"], ["sq2"], name="square2"),
        helper.make_node("Gemm", ["sq2", "fc2_w", "fc2_b"], ["output"], name="fc2", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "crowd_incident",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 2, INPUT_SIZE, INPUT_SIZE])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="fhe-edge training", producer_version="1")
    model.ir_version = 8          # readable by every onnxruntime >= 1.10
    meta = {"fhe_edge.input": json.dumps(INPUT_META), "fhe_edge.outputs": json.dumps(OUTPUTS_META),
            "fhe_edge.motion": json.dumps(MOTION_META), "fhe_edge.model_card": MODEL_CARD}
    meta.update(extra_meta or {})
    for k in sorted(meta):
        model.metadata_props.add(key=k, value=meta[k])
    onnx.checker.check_model(model, full_check=True)
    return model


def write_onnx(w: dict[str, np.ndarray], path: str | Path, extra_meta: dict[str, str] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(build_onnx(w, extra_meta).SerializeToString())
    return path
