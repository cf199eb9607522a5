"""A real protected tiny model and its signed bundle, for tests of the gateway's config checks:
(1, 2, 8, 8) gray+motion -> [mean gray, mean motion]. Protecting it takes a second or two."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SIZE = 8


def tiny_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    w = np.zeros((2, 2 * SIZE * SIZE), np.float32)
    w[0, :SIZE * SIZE] = w[1, SIZE * SIZE:] = 1.0 / (SIZE * SIZE)
    nodes = [helper.make_node("Flatten", ["input"], ["flat"], axis=1),
             helper.make_node("Gemm", ["flat", "w", "b"], ["output"], transB=1)]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 2, SIZE, SIZE])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(2, np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.metadata_props.add(key="fhe_edge.input", value=json.dumps(
        {"shape": [1, 2, SIZE, SIZE], "channels": "gray+motion", "scale": 1 / 255}))
    onnx.save(model, str(path))
    return path


def signed_bundle(folder: Path, model_id: str = "tiny", version: int = 1) -> tuple[Path, Path]:
    """(bundle, owner public key) in `folder`."""
    from protected_nn import api, bundle
    prot = api.protect(tiny_onnx(folder / "tiny.onnx"))
    key = bundle.generate_owner_key()
    bundle.save_public_key(key, folder / "owner.pub")
    bundle.write_bundle(folder / "model.bundle", model_id, prot.artifacts, key, version=version)
    return folder / "model.bundle", folder / "owner.pub"
