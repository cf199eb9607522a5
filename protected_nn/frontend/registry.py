"""The op table: ONNX op name (default domain) -> handler(node, ctx). One entry per supported
op; docs/ops.md describes each lowering and tests/test_op_coverage.py fails if an entry here has
no test case in tests/op_cases.py."""
from __future__ import annotations

from typing import Callable

import onnx

from protected_nn.errors import UnsupportedOpError
from protected_nn.frontend.ops import (activations, arithmetic, batchnorm, conv, dense, pooling,
                                       shape)

OP_TABLE: dict[str, Callable] = {
    # linear layers
    "Conv": conv.lower_conv,
    "Gemm": dense.lower_gemm,
    "MatMul": dense.lower_matmul,
    "BatchNormalization": batchnorm.lower_batchnorm,
    "AveragePool": pooling.lower_average_pool,
    "GlobalAveragePool": pooling.lower_global_average_pool,
    "MaxPool": pooling.lower_max_pool,            # approximated (mean of the window), warns
    "Transpose": shape.lower_transpose,
    # elementwise arithmetic
    "Add": arithmetic.lower_add,
    "Sub": arithmetic.lower_sub,
    "Sum": arithmetic.lower_sum,
    "Mul": arithmetic.lower_mul,
    "Div": arithmetic.lower_div,
    "Pow": arithmetic.lower_pow,
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
