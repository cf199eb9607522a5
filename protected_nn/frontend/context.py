"""State shared by the op handlers while one ONNX graph is lowered to the IR.

Every ONNX tensor is either a *constant* (initializer, Constant node, or folded from constants)
or an *encrypted* tensor: a view (`Tensor`) of one IR layer's flat C-order vector with an ONNX
shape. Shape-only ops (Flatten, Reshape, Identity...) just create a new view of the same layer,
so they cost nothing in the IR.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
import scipy.sparse as sp

from protected_nn import ir
from protected_nn.errors import ModelError, UnsupportedOpError


@dataclass(frozen=True)
class Tensor:
    """An encrypted ONNX tensor: the values of IR layer `layer`, viewed with ONNX `shape`."""
    layer: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


def ir_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape stored on an IR layer. `ir.Layer.size` assumes (1, ...) batch-first shapes, so a
    view whose leading dim is not 1 (e.g. after Reshape to (2, 5)) is stored as (1, 2, 5)."""
    shape = tuple(int(d) for d in shape)
    if len(shape) >= 2 and shape[0] == 1:
        return shape
    if len(shape) == 1:
        return shape
    return (1, *shape)


def attributes(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


class LoweringContext:
    def __init__(self, *, constants: dict[str, np.ndarray],
                 calibrate: Callable[[], tuple[dict, dict]], poly_degree: int):
        self.constants = constants
        # calibrate() runs onnxruntime: (min/max, shape) of every tensor. Run lazily, so a model
        # with an unsupported op or attribute fails with our error before onnxruntime sees it.
        self._calibrate = calibrate
        self._observed: tuple[dict, dict] | None = None
        self.poly_degree = poly_degree
        self.tensors: dict[str, Tensor] = {}
        self.layers: list[ir.Layer] = []
        self.warnings: list[str] = []
        self._names: set[str] = set()
        self._producer: dict[str, str] = {}

    # ---- looking up inputs -------------------------------------------------------------
    def is_const(self, name: str) -> bool:
        return name in self.constants

    def is_encrypted(self, name: str) -> bool:
        return name in self.tensors

    def const(self, name: str, node: onnx.NodeProto, what: str = "operand") -> np.ndarray:
        if name in self.constants:
            return self.constants[name]
        if name in self.tensors:
            raise UnsupportedOpError(
                f"{node.op_type} node '{node.name}': {what} '{name}' depends on the model input "
                f"(it would be encrypted); it must be a constant (initializer or Constant node)")
        raise ModelError(f"{node.op_type} node '{node.name}': input '{name}' is not defined")

    def tensor(self, name: str, node: onnx.NodeProto) -> Tensor:
        if name in self.tensors:
            return self.tensors[name]
        if name in self.constants:
            raise UnsupportedOpError(
                f"{node.op_type} node '{node.name}': input '{name}' is a constant where the "
                f"encrypted data flow is expected; an op on constants only should be folded")
        raise ModelError(f"{node.op_type} node '{node.name}': input '{name}' is not defined")

    def observed(self) -> tuple[dict[str, tuple[float, float]], dict[str, tuple[int, ...]]]:
        if self._observed is None:
            self._observed = self._calibrate()
        return self._observed

    def range_of(self, name: str) -> tuple[float, float]:
        ranges = self.observed()[0]
        if name not in ranges:
            raise ModelError(f"no calibration range for tensor '{name}'")
        lo, hi = ranges[name]
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ModelError(f"tensor '{name}' takes non-finite values on the calibration inputs "
                             f"({lo}, {hi}); cannot fit a polynomial there")
        return lo, hi

    # ---- producing outputs -------------------------------------------------------------
    def set_const(self, name: str, value: np.ndarray) -> None:
        self.constants[name] = np.asarray(value)

    def alias(self, name: str, source: Tensor, shape: tuple[int, ...], node: onnx.NodeProto) -> None:
        """`name` is `source` with another shape: no IR layer."""
        shape = tuple(int(d) for d in shape)
        if int(np.prod(shape, dtype=np.int64)) != source.size:
            raise ModelError(f"{node.op_type} node '{node.name}': cannot view {source.size} "
                             f"values as shape {shape}")
        self._bind(name, Tensor(source.layer, shape), node)

    def fresh_name(self, base: str) -> str:
        name, k = base, 0
        while name in self._names:
            k += 1
            name = f"{base}:{k}"
        self._names.add(name)
        return name

    def emit(self, layer: ir.Layer, onnx_name: str | None, shape: tuple[int, ...],
             node: onnx.NodeProto | None) -> Tensor:
        """Append an IR layer; bind ONNX tensor `onnx_name` (if any) to it with `shape`."""
        self.layers.append(layer)
        t = Tensor(layer.name, tuple(int(d) for d in shape))
        if onnx_name is not None:
            self._bind(onnx_name, t, node)
        return t

    def linear(self, node: onnx.NodeProto, x: Tensor, W, b, out_shape: tuple[int, ...],
               bind: bool = True, suffix: str = "") -> Tensor:
        """Emit y = W x + b as an IR Linear. With bind, the node's first output is this layer;
        otherwise it is a helper layer (named output + suffix) the handler uses further."""
        out_shape = tuple(int(d) for d in out_shape)
        W = sp.csr_matrix(W, dtype=np.float64)
        n_out = int(np.prod(out_shape, dtype=np.int64))
        if W.shape != (n_out, x.size):
            raise ModelError(f"{node.op_type} node '{node.name}': internal matrix {W.shape} does "
                             f"not map {x.size} -> {n_out} values")
        b = np.zeros(n_out) if b is None else np.broadcast_to(
            np.asarray(b, dtype=np.float64).reshape(-1), (n_out,)).copy()
        W.eliminate_zeros()
        layer = ir.Linear(name=self.fresh_name(node.output[0] + suffix), inputs=[x.layer],
                          shape=ir_shape(out_shape), sources=[node.name], weights=[W], bias=b)
        return self.emit(layer, node.output[0] if bind else None, out_shape, node)

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def _bind(self, name: str, t: Tensor, node: onnx.NodeProto | None) -> None:
        self.tensors[name] = t
        self._producer[name] = f"{node.op_type} node '{node.name}'" if node is not None else "input"

    def verify_shapes(self) -> None:
        """Every encrypted tensor's shape must be the one onnxruntime computes: a lowering that
        disagrees (an attribute combination we get wrong) fails loudly instead of silently."""
        shapes = self.observed()[1]
        for name, t in self.tensors.items():
            seen = shapes.get(name)
            if seen is not None and tuple(seen) != t.shape:
                raise ModelError(f"{self._producer[name]}: lowered output '{name}' has shape "
                                 f"{t.shape} but onnxruntime produces {tuple(seen)}")
