"""ONNX frontend: `load_onnx(path_or_model, calibration=..., poly_degree=...) -> ir.Graph`.
Supported ops and their lowering: docs/ops.md; the op table: `registry.OP_TABLE`."""
from protected_nn.frontend.loader import load_onnx
from protected_nn.frontend.registry import OP_TABLE, supported_ops

__all__ = ["load_onnx", "OP_TABLE", "supported_ops"]
