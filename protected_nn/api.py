"""The facade both services use. Owner side: `protect`, `OwnerModel`. Gateway side: `EdgeModel`.

    prot = protect("model.onnx", calibration=x_cal)          # keys + compile + encrypt + self-check
    edge = EdgeModel(prot.artifacts)                          # no secret key anywhere in it
    payload = edge.infer(x)                                   # bytes: encrypted result
    y = OwnerModel(prot.artifacts, prot.secret_key).decrypt(payload)   # == onnxruntime(x) +- tol
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from protected_nn.artifacts import ModelArtifacts


@dataclass
class ProtectOptions:
    poly_degree: int = 4               # degree of polynomials replacing Relu/Sigmoid/... activations
    tolerance: float = 1e-2            # max |enc - onnxruntime| / output range accepted by the self-check
    force: bool = False                # store even above tolerance
    calibration_samples: int = 8       # drawn in the input range when no calibration file is given
    input_range: tuple[float, float] = (0.0, 1.0)


@dataclass
class Protected:
    artifacts: ModelArtifacts
    secret_key: bytes
    report: dict = field(default_factory=dict)
    report_text: str = ""


def protect(onnx_path, *, calibration: np.ndarray | None = None,
            options: ProtectOptions | None = None) -> Protected:
    raise NotImplementedError("being written: see protected_nn/compiler")


class EdgeModel:
    """Gateway side: loads public artifacts, encrypts inputs, evaluates, serializes results."""

    def __init__(self, artifacts: ModelArtifacts):
        raise NotImplementedError

    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]

    def infer(self, x: np.ndarray) -> bytes:
        raise NotImplementedError


class OwnerModel:
    """Backend side: holds the secret key; decrypts payloads to the model's output tensor."""

    def __init__(self, artifacts: ModelArtifacts, secret_key: bytes):
        raise NotImplementedError

    def decrypt(self, payload: bytes) -> np.ndarray:
        raise NotImplementedError
