"""The plan's wire format, shared by the compiler (writes it) and the gateway (reads it):
its version, the step kinds it may contain, and the packed integer arrays. The gateway imports
only this module of the two, so it never loads compiler code."""
from __future__ import annotations

import base64

import numpy as np

from protected_nn.errors import BundleError

PLAN_VERSION = 3      # 2: tensors over several ciphertexts ("mlinear"); 3: "gather_linear"
KNOWN_VERSIONS = (1, 2, 3)


def encode_array(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype="<i4").tobytes()).decode()


def decode_array(s: str, shape) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype="<i4").reshape(shape).astype(np.int64)


def check_version(plan: dict) -> None:
    version = plan.get("version") if isinstance(plan, dict) else None
    if type(version) is not int or version not in KNOWN_VERSIONS:      # true == 1 in Python
        raise BundleError(f"plan version {version!r} is not one this gateway knows "
                          f"({', '.join(map(str, KNOWN_VERSIONS))}): update the gateway software "
                          f"or re-protect the model with a matching version")
