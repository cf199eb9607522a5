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

from training.features import FRAME_INTERVAL_S, MAX_FRAME_GAP
from training.model import Arch

OPSET = 17
OUTPUTS_META = [{"name": "crowd_count", "index": 0, "kind": "count"},
                {"name": "incident", "index": 1, "kind": "logit"}]
MOTION_META = {"order": "resize_then_absdiff", "frame_interval_s": FRAME_INTERVAL_S,
               "trained_gaps_frames": list(range(1, MAX_FRAME_GAP + 1)), "first_frame": "zeros",
               "count_uses_motion": False}
MODEL_CARD = ("Crowd-and-incident CNN for fhe-edge. Count trained on real frames of the Mall dataset "
              "(Chen, Loy, Gong, Xiang, BMVC 2012 / CVPR 2013; research use only) with the motion "
              "channel zeroed or dropped, incidents on synthetic rendered scenes (dispersal, fall) with "
              "calm real frames as negatives. Input: {h}x{w} grayscale frame + |difference from the "
              "frame 0.1 s earlier| (BGR->GRAY, INTER_AREA resize, /255). Outputs: [0] estimated "
              "number of people in view, [1] incident logit (sigmoid > 0.5 = incident). Square "
              "activations and average pooling only, for CKKS inference. See models/README.md.")


def input_meta(arch: Arch) -> dict:
    return {"shape": [1, 2, *arch.size], "channels": "gray+motion", "scale": 1 / 255,
            "mean": 0, "std": 1, "resize": "area"}


def build_onnx(w: dict[str, np.ndarray], arch: Arch, extra_meta: dict[str, str] | None = None) -> onnx.ModelProto:
    n_conv = len(arch.convs)
    if w["fc1_w"].shape != (arch.hidden + 4, arch.flat()) or w["fc2_w"].shape != (2, arch.hidden + 4) \
            or any(w[f"conv{i}_w"].shape[0] != c for i, (c, *_) in enumerate(arch.convs)):
        raise ValueError(f"weights do not chain for {arch}: fc1 {w['fc1_w'].shape}, fc2 {w['fc2_w'].shape}")
    inits = [numpy_helper.from_array(np.ascontiguousarray(v, np.float32), name=k) for k, v in sorted(w.items())]
    nodes, cur = [], "input"
    for i, (_, k, s, p) in enumerate(arch.convs):
        nodes.append(helper.make_node("Conv", [cur, f"conv{i}_w", f"conv{i}_b"], [f"conv{i}"], name=f"conv{i}",
                                      kernel_shape=[k, k], strides=[s, s], pads=[k // 2] * 4))
        nodes.append(helper.make_node("Mul", [f"conv{i}", f"conv{i}"], [f"sq{i}"], name=f"square{i}"))
        cur = f"sq{i}"
        if p > 1:
            nodes.append(helper.make_node("AveragePool", [cur], [f"pool{i}"], name=f"pool{i}",
                                          kernel_shape=[p, p], strides=[p, p]))
            cur = f"pool{i}"
    nodes += [
        helper.make_node("Flatten", [cur], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc1_w", "fc1_b"], ["fc1"], name="fc1", transB=1),
        helper.make_node("Mul", ["fc1", "fc1"], ["sq_fc"], name=f"square{n_conv}"),
        helper.make_node("Gemm", ["sq_fc", "fc2_w", "fc2_b"], ["output"], name="fc2", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "crowd_incident",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 2, *arch.size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="fhe-edge training", producer_version="2")
    model.ir_version = 8          # readable by every onnxruntime >= 1.10
    meta = {"fhe_edge.input": json.dumps(input_meta(arch)), "fhe_edge.outputs": json.dumps(OUTPUTS_META),
            "fhe_edge.motion": json.dumps(MOTION_META),
            "fhe_edge.model_card": MODEL_CARD.format(h=arch.size[0], w=arch.size[1])}
    meta.update(extra_meta or {})
    for key in sorted(meta):
        model.metadata_props.add(key=key, value=meta[key])
    onnx.checker.check_model(model, full_check=True)
    return model


def write_onnx(w: dict[str, np.ndarray], arch: Arch, path: str | Path,
               extra_meta: dict[str, str] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(build_onnx(w, arch, extra_meta).SerializeToString())
    return path
