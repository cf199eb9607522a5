"""The layer graph (IR) between the ONNX frontend and the CKKS compiler.

Every tensor is a flat float vector: an ONNX tensor of shape (1, *dims) is its C-order
flattening, so Flatten/Reshape/Identity/Dropout vanish. Every linear piece of the model (Conv,
Gemm, MatMul, BatchNormalization, AveragePool, Mul/Add by a constant...) becomes one `Linear`
layer y = W @ x + b with a sparse W; consecutive linear layers are fused by `fuse_linear`.

This is the only graph type: the frontend builds it and the compiler plans it. The compiler
lowers each `Add` into a multi-input `Linear` (y = sum_i W_i x_i + b) and runs the same fusion
pass (`fold_linear`) again, so a residual join costs no level (compiler/graph.py).

The IR is in topological order; `evaluate_plain` is the reference semantics the encrypted
runtime must reproduce (and which the tests compare with onnxruntime).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import scipy.sparse as sp


@dataclass
class Layer:
    name: str                     # output tensor name (unique)
    inputs: list[str]             # input tensor names
    shape: tuple[int, ...]        # ONNX output shape, batch included (1, ...)
    sources: list[str] = field(default_factory=list)  # ONNX node names folded into this layer

    @property
    def size(self) -> int:
        return int(np.prod(self.shape[1:])) if len(self.shape) > 1 else int(self.shape[0])


@dataclass
class Input(Layer):
    """The model's (single) input; the gateway encrypts it."""


@dataclass
class Linear(Layer):
    """y = sum_i weights[i] @ x_i + bias, one sparse (out, in_i) matrix per input; trained
    parameters -> encrypted. The frontend builds single-input maps (`W`, `b`); the compiler's
    Add lowering makes multi-input ones. `pool`: the weights are a public window mean
    (AveragePool, GlobalAveragePool, the MaxPool stand-in): the compiler may run it as a
    rotate-and-add sum instead of fusing it into the next layer (compiler/pooling.py)."""
    weights: list[sp.csr_matrix] = field(default_factory=list)
    bias: np.ndarray = None
    pool: bool = False
    # Filled by the compiler (compiler/graph.py), unset in the frontend's graph:
    geometries: list = field(default_factory=list)   # per input: structure.Geometry or None
    fused: "Linear | None" = None      # on a kept pool: its reader with the pool folded in
    reader: "Linear | None" = None     # on a kept pool: the linear map that reads it
    reader_is_output: bool = False
    floor_of: "Linear | None" = None   # on a fused reader: the map whose trained weights count

    @property
    def W(self) -> sp.csr_matrix:
        if len(self.weights) != 1:
            raise ValueError(f"layer {self.name} has {len(self.weights)} inputs, not one W")
        return self.weights[0]

    @property
    def b(self) -> np.ndarray:
        return self.bias


@dataclass
class Square(Layer):
    """y = x * x (Mul(x, x) or Pow(x, 2)): one ciphertext-ciphertext product."""


@dataclass
class Poly(Layer):
    """y = sum_k coeffs[k] * x**k, elementwise: a polynomial that replaces a non-polynomial
    activation (Relu, Sigmoid...). Public approximation constants, not trained parameters."""
    coeffs: np.ndarray = None       # low -> high degree
    op: str = ""                    # the ONNX op it approximates
    fit_range: tuple[float, float] = (0.0, 0.0)
    fit_max_error: float = 0.0      # max |poly - f| over fit_range


@dataclass
class Add(Layer):
    """Elementwise sum of two or more encrypted tensors (residual joins, Sum)."""


@dataclass
class Graph:
    layers: list[Layer]            # topological order; layers[0] is the Input
    output: str                    # name of the output tensor
    output_shape: tuple[int, ...]  # ONNX output shape (as onnxruntime returns it)
    input_name: str = "input"
    warnings: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)  # ONNX metadata_props

    @property
    def input(self) -> Input:
        return self.layers[0]

    def by_name(self) -> dict[str, Layer]:
        return {layer.name: layer for layer in self.layers}

    def consumers(self) -> dict[str, list[Layer]]:
        out: dict[str, list[Layer]] = {layer.name: [] for layer in self.layers}
        for layer in self.layers:
            for name in layer.inputs:
                out[name].append(layer)
        return out


def evaluate_plain(graph: Graph, x: np.ndarray) -> np.ndarray:
    """Reference semantics of the IR on one input (any shape with the right size)."""
    values: dict[str, np.ndarray] = {}
    for layer in graph.layers:
        if isinstance(layer, Input):
            v = np.asarray(x, dtype=np.float64).reshape(-1)
            if v.size != layer.size:
                raise ValueError(f"input has {v.size} values, model expects {layer.size}")
        else:
            args = [values[n] for n in layer.inputs]
            if isinstance(layer, Linear):
                v = layer.weights[0] @ args[0]
                for W, a in zip(layer.weights[1:], args[1:]):
                    v = v + W @ a
                v = v + layer.bias
            elif isinstance(layer, Square):
                v = args[0] * args[0]
            elif isinstance(layer, Poly):
                v = np.polynomial.polynomial.polyval(args[0], layer.coeffs)
            elif isinstance(layer, Add):
                v = np.sum(args, axis=0)
            else:  # pragma: no cover - a new layer kind must be added here
                raise TypeError(f"unknown IR layer {type(layer).__name__}")
        values[layer.name] = v
    return values[graph.output].reshape(graph.output_shape)


def fuse_linear(graph: Graph) -> Graph:
    """The frontend's fusion: `fold_linear` on a copy of the graph (the input is not changed)."""
    layers = [copy_linear(l) if isinstance(l, Linear) else l for l in graph.layers]
    return Graph(layers=fold_linear(layers, graph.output), output=graph.output,
                 output_shape=graph.output_shape, input_name=graph.input_name,
                 warnings=graph.warnings, metadata=graph.metadata)


def copy_linear(layer: Linear, **changes) -> Linear:
    """A Linear whose lists the fusion pass may change without touching `layer`."""
    fresh = dict(inputs=list(layer.inputs), sources=list(layer.sources), weights=list(layer.weights))
    return replace(layer, **{**fresh, **changes})


def fold_linear(layers: list[Layer], output: str) -> list[Layer]:
    """The one fusion pass: a Linear producer read by a single Linear (and not the output) is
    substituted into it, W_k (sum_i P_i x_i + p) - fewer layers = fewer levels. Changes the
    Linears of `layers` in place. A public pool is folded into a linear map before it, never
    into the one after it: whether that pays depends on the layouts, and the compiler decides
    (compiler/pooling.py)."""
    changed = True
    while changed:
        changed = False
        by_name = {layer.name: layer for layer in layers}
        uses: dict[str, int] = {layer.name: 0 for layer in layers}
        for layer in layers:
            for n in layer.inputs:
                uses[n] += 1
        for layer in layers:
            if not isinstance(layer, Linear):
                continue
            for k, src in enumerate(layer.inputs):
                prod = by_name[src]
                if isinstance(prod, Linear) and uses[src] == 1 and src != output and not prod.pool:
                    absorb(layer, k, prod)
                    layers = [l for l in layers if l is not prod]
                    changed = True
                    break
            if changed:
                break
    return layers


def absorb(node: Linear, k: int, prod: Linear) -> None:
    """node's input k is prod's output: substitute W_k (sum_i P_i x_i + p) into node. A pool
    stays one only if prod changes nothing (an identity map, e.g. a one-term Sum): any other
    composition is no window mean."""
    wk = node.weights[k]
    node.pool = node.pool and _is_identity(prod)
    node.bias = node.bias + wk @ prod.bias
    inputs = node.inputs[:k] + node.inputs[k + 1:]
    weights = node.weights[:k] + node.weights[k + 1:]
    for src, pw in zip(prod.inputs, prod.weights):
        term = sp.csr_matrix(wk @ pw)
        if src in inputs:                     # the same tensor reached by two paths: add up
            idx = inputs.index(src)
            weights[idx] = sp.csr_matrix(weights[idx] + term)
        else:
            inputs.append(src)
            weights.append(term)
    node.inputs, node.weights = inputs, weights
    node.sources = prod.sources + node.sources


def _is_identity(layer: Linear) -> bool:
    W = layer.weights[0] if len(layer.weights) == 1 else None
    return (W is not None and W.shape[0] == W.shape[1] and not np.any(layer.bias)
            and (W != sp.identity(W.shape[0], format="csr")).nnz == 0)
