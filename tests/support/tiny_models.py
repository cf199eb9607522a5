"""The tests' tiny ONNX models, all made by one builder (`dense_model`: [Flatten ->] Gemm [-> x*x]),
and a real protected, signed bundle of one of them. Protecting any of them takes a second or two.

- `frame_model`: what the gateway feeds a model, (1, 2, 8, 8) gray+motion -> [mean gray, mean motion];
- `crowd_model`: y = [30 x0, 10 x1 - 5], whose two outputs mimic (crowd count, incident logit);
- `square_model`: a random Gemm 8->4 then x*x, with an onnxruntime runner to compare against."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SIZE = 8
CROWD_OUTPUTS = [{"name": "crowd_count", "index": 0, "kind": "count"},
                 {"name": "incident", "index": 1, "kind": "logit"}]


def dense_model(path: Path, weight: np.ndarray, bias: np.ndarray, *, input_shape: list[int],
                input_name: str = "x", output_name: str = "y", square: bool = False,
                metadata: dict | None = None) -> Path:
    """y = weight @ x + bias (weight shaped (out, in); an input of rank > 2 is flattened first),
    then y * y if `square`; `metadata` (the model card keys, fhe_edge.*) is stored JSON-encoded."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    nodes, x = [], input_name
    if len(input_shape) > 2:
        nodes.append(helper.make_node("Flatten", [x], ["flat"], axis=1))
        x = "flat"
    gemm_out = "h" if square else output_name
    nodes.append(helper.make_node("Gemm", [x, "W", "B"], [gemm_out], transB=1))
    if square:
        nodes.append(helper.make_node("Mul", ["h", "h"], [output_name]))
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [1, weight.shape[0]])],
        [numpy_helper.from_array(np.asarray(weight, np.float32), "W"),
         numpy_helper.from_array(np.asarray(bias, np.float32), "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=json.dumps(value))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


def frame_model(path: Path, outputs: list[dict] | None = None) -> Path:
    """(1, 2, 8, 8) gray+motion frames scaled 1/255 -> [mean gray, mean motion]; `outputs`: its card."""
    w = np.zeros((2, 2 * SIZE * SIZE), np.float32)
    w[0, :SIZE * SIZE] = w[1, SIZE * SIZE:] = 1.0 / (SIZE * SIZE)
    metadata = {"fhe_edge.input": {"shape": [1, 2, SIZE, SIZE], "channels": "gray+motion", "scale": 1 / 255}}
    if outputs is not None:
        metadata["fhe_edge.outputs"] = outputs
    return dense_model(path, w, np.zeros(2, np.float32), input_shape=[1, 2, SIZE, SIZE],
                       input_name="input", output_name="output", metadata=metadata)


def crowd_model(path: Path) -> Path:
    """y = [30 * x0, 10 * x1 - 5]: x0 in [0, 1] -> count 0..30, x1 -> incident logit -5..5."""
    w = np.zeros((2, 4), np.float32)
    w[0, 0], w[1, 1] = 30.0, 10.0
    return dense_model(path, w, np.array([0.0, -5.0], np.float32), input_shape=[1, 4],
                       metadata={"fhe_edge.outputs": CROWD_OUTPUTS})


def square_model(folder: Path, seed: int = 0, name: str = "tiny.onnx"):
    """Gemm 8->4 (random weights from `seed`) then x*x; returns (path, onnxruntime runner)."""
    import onnxruntime
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.5, (4, 8)).astype(np.float32)
    b = rng.normal(0, 0.1, (4,)).astype(np.float32)
    path = dense_model(Path(folder) / name, w, b, input_shape=[1, 8], square=True)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return path, lambda x: session.run(None, {"x": x.astype(np.float32)})[0]


def signed_bundle(folder: Path, model_id: str = "tiny", version: int = 1) -> tuple[Path, Path]:
    """The frame model protected and signed: (bundle, owner public key) in `folder`."""
    from protected_nn import api, bundle
    prot = api.protect(frame_model(folder / "tiny.onnx"))
    key = bundle.generate_owner_key()
    bundle.save_public_key(key, folder / "owner.pub")
    bundle.write_bundle(folder / "model.bundle", model_id, prot.artifacts, key, version=version)
    return folder / "model.bundle", folder / "owner.pub"
