"""An ONNX backend (onnx.backend.base.Backend) that runs a model under encryption, so that
onnx's own node test cases exercise the whole path: protect (keys, compile, encrypt every
parameter) -> EdgeModel.infer (public keys only) -> OwnerModel.decrypt.

Inputs after the first are model parameters (weights of a Conv node test, say): they are baked
into the model as initializers and encrypted like any trained weight."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.backend.base import Backend, BackendRep

from protected_nn.api import EdgeModel, OwnerModel, ProtectOptions, protect


def bake_parameters(model: onnx.ModelProto, inputs: list[np.ndarray]) -> onnx.ModelProto:
    """Copy of `model` whose graph inputs after the first are initializers with these values."""
    baked = onnx.ModelProto()
    baked.CopyFrom(model)
    graph = baked.graph
    init_names = {i.name for i in graph.initializer}
    data_inputs = [i for i in graph.input if i.name not in init_names]
    for spec, value in zip(data_inputs[1:], inputs[1:]):
        graph.initializer.append(numpy_helper.from_array(np.asarray(value), spec.name))
    keep = [data_inputs[0]] if data_inputs else []
    del graph.input[:]
    graph.input.extend(keep)
    return baked


class EncryptedRep(BackendRep):
    def __init__(self, model: onnx.ModelProto, options: ProtectOptions | None = None):
        self.model = model
        self.options = options or ProtectOptions(force=True)
        self.last_report: dict = {}

    def run(self, inputs, **kwargs):
        inputs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        model = bake_parameters(self.model, inputs)
        x = np.asarray(inputs[0], dtype=np.float32)
        prot = protect(model, calibration=x[None], options=self.options)
        self.last_report = prot.report
        y = OwnerModel(prot.artifacts, prot.secret_key).decrypt(EdgeModel(prot.artifacts).infer(x))
        return (y,)


class EncryptedBackend(Backend):
    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs) -> EncryptedRep:
        super().prepare(model, device, **kwargs)
        return EncryptedRep(model, kwargs.get("options"))

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device.upper() == "CPU"

    @classmethod
    def run_model(cls, model, inputs, device="CPU", **kwargs):
        return cls.prepare(model, device, **kwargs).run(inputs)
