"""BatchNormalization (inference) -> a diagonal Linear, folded into neighbours by fuse_linear."""
from __future__ import annotations

import numpy as np
import onnx

from protected_nn.errors import UnsupportedOpError
from protected_nn.frontend.context import LoweringContext, attributes
from protected_nn.frontend.ops.linalg import diagonal


def lower_batchnorm(node: onnx.NodeProto, ctx: LoweringContext) -> None:
    attrs = attributes(node)
    where = f"BatchNormalization node '{node.name}'"
    if attrs.get("training_mode", 0):
        raise UnsupportedOpError(f"{where}: training_mode=1 is not supported (inference only)")
    if len([o for o in node.output[1:] if o]) > 0:
        raise UnsupportedOpError(f"{where}: running-statistics outputs are training-only")
    x = ctx.tensor(node.input[0], node)
    scale, bias, mean, var = (np.asarray(ctx.const(n, node, what), dtype=np.float64).reshape(-1)
                              for n, what in zip(node.input[1:5], ("scale", "B", "mean", "var")))
    eps = float(attrs.get("epsilon", 1e-5))
    if len(x.shape) < 2:
        raise UnsupportedOpError(f"{where}: input {x.shape} has no channel axis")
    C = x.shape[1]
    if not all(v.size == C for v in (scale, bias, mean, var)):
        raise UnsupportedOpError(f"{where}: parameters do not have {C} channel values")
    gain = scale / np.sqrt(var + eps)
    shift = bias - mean * gain
    per_channel = int(np.prod(x.shape[2:], dtype=np.int64))
    outer = x.shape[0]
    g = np.tile(np.repeat(gain, per_channel), outer)
    s = np.tile(np.repeat(shift, per_channel), outer)
    ctx.linear(node, x, diagonal(g), s, x.shape)
