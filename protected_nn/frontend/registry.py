"""The op table: ONNX op name (default domain) -> handler(node, ctx). One entry per supported
op; docs/ops.md describes each lowering and tests/frontend/test_op_coverage.py fails if an entry here has
no test case in tests/support/op_cases.py."""
from __future__ import annotations

from typing import Callable

import onnx

from protected_nn.errors import UnsupportedOpError
from protected_nn.frontend.ops import (activations, arithmetic, batchnorm, concat, conv, dense,
                                       indexing, pooling, reduce, shape)

OP_TABLE: dict[str, Callable] = {
    # linear layers
    "Conv": conv.lower_conv,
    "Gemm": dense.lower_gemm,
    "MatMul": dense.lower_matmul,
    "BatchNormalization": batchnorm.lower_batchnorm,
    "AveragePool": pooling.lower_average_pool,
    "GlobalAveragePool": pooling.lower_global_average_pool,
    "MaxPool": pooling.lower_max_pool,            # approximated (mean of the window), warns
    "GlobalMaxPool": pooling.lower_global_max_pool,   # approximated likewise, warns
    "ReduceMean": reduce.lower_reduce_mean,
    "ReduceSum": reduce.lower_reduce_sum,
    "Transpose": shape.lower_transpose,
    # moving / repeating values (0/1 Linear, constants as bias)
    "Pad": indexing.lower_pad,
    "Slice": indexing.lower_slice,
    "Gather": indexing.lower_gather,
    "Expand": indexing.lower_expand,
    "Tile": indexing.lower_tile,
    "DepthToSpace": indexing.lower_depth_to_space,
    "SpaceToDepth": indexing.lower_space_to_depth,
    "Concat": concat.lower_concat,                # several encrypted inputs: Linear per branch + Add
    # elementwise arithmetic
    "Add": arithmetic.lower_add,
    "Sub": arithmetic.lower_sub,
    "Sum": arithmetic.lower_sum,
    "Mul": arithmetic.lower_mul,
    "Div": arithmetic.lower_div,
    "Pow": arithmetic.lower_pow,
    "Neg": arithmetic.lower_neg,
    "Mean": arithmetic.lower_mean,
    "ReduceSumSquare": reduce.lower_reduce_sum_square,   # Square, then a summing Linear
    # shape-only views (no IR layer)
    "Flatten": shape.lower_flatten,
    "Reshape": shape.lower_reshape,
    "Identity": shape.lower_identity,
    "Dropout": shape.lower_dropout,
    "Squeeze": shape.lower_squeeze,
    "Unsqueeze": shape.lower_unsqueeze,
    "Shape": shape.lower_shape,
    # activations -> fitted polynomials
    "Relu": activations.lower_activation,
    "Sigmoid": activations.lower_activation,
    "Tanh": activations.lower_activation,
    "Softplus": activations.lower_activation,
    "LeakyRelu": activations.lower_activation,
    "Clip": activations.lower_clip,               # identity where the bounds are never reached
    "Elu": activations.lower_activation,
    "Selu": activations.lower_activation,
    "HardSigmoid": activations.lower_activation,
    "HardSwish": activations.lower_activation,
    "Softsign": activations.lower_activation,
    "Mish": activations.lower_activation,
    "Gelu": activations.lower_activation,
}

_DEFAULT_DOMAINS = ("", "ai.onnx")


def supported_ops() -> list[str]:
    return sorted(OP_TABLE)


def handler_for(node: onnx.NodeProto) -> Callable:
    if node.domain in _DEFAULT_DOMAINS and node.op_type in OP_TABLE:
        return OP_TABLE[node.op_type]
    op = node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}::{node.op_type}"
    raise UnsupportedOpError(f"ONNX op '{op}' (node '{node.name}') is not supported; "
                             f"supported ops: {', '.join(supported_ops())}")
