"""The layer graph (IR) between the ONNX frontend and the CKKS compiler.

Every tensor is a flat float vector: an ONNX tensor of shape (1, *dims) is its C-order
flattening, so Flatten/Reshape/Identity/Dropout vanish. Every linear piece of the model (Conv,
Gemm, MatMul, BatchNormalization, AveragePool, Mul/Add by a constant...) becomes one `Linear`
layer y = W @ x + b with a sparse W; consecutive linear layers are fused by `fuse_linear`.

The IR is in topological order; `evaluate_plain` is the reference semantics the encrypted
runtime must reproduce (and which the tests compare with onnxruntime).
"""
from __future__ import annotations

from dataclasses import dataclass, field

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
    """y = W @ x + b. W: (out, in) sparse; trained parameters -> encrypted. `pool`: W is a
    public window mean (AveragePool, GlobalAveragePool, the MaxPool stand-in): the compiler may
    run it as a rotate-and-add sum instead of fusing it into the next layer (compiler/pooling.py)."""
    W: sp.csr_matrix = None
    b: np.ndarray = None
    pool: bool = False


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
                v = layer.W @ args[0] + layer.b
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
    """Compose chains Linear -> Linear when the first has no other consumer:
    W2 (W1 x + b1) + b2 = (W2 W1) x + (W2 b1 + b2). Fewer layers = fewer levels. A public pool
    is fused into a linear layer before it, never into the one after it: whether that pays
    depends on the layouts, and the compiler decides (compiler/pooling.py)."""
    layers = list(graph.layers)
    changed = True
    while changed:
        changed = False
        by_name = {layer.name: layer for layer in layers}
        consumers: dict[str, int] = {layer.name: 0 for layer in layers}
        for layer in layers:
            for n in layer.inputs:
                consumers[n] += 1
        for i, layer in enumerate(layers):
            if not isinstance(layer, Linear):
                continue
            prev = by_name.get(layer.inputs[0])
            if (isinstance(prev, Linear) and consumers[prev.name] == 1 and prev.name != graph.output
                    and not prev.pool):
                fused = Linear(name=layer.name, inputs=list(prev.inputs), shape=layer.shape,
                               sources=prev.sources + layer.sources,
                               W=sp.csr_matrix(layer.W @ prev.W),
                               b=layer.W @ prev.b + layer.b)
                layers = [fused if l is layer else l for l in layers if l is not prev]
                changed = True
                break
    return Graph(layers=layers, output=graph.output, output_shape=graph.output_shape,
                 input_name=graph.input_name, warnings=graph.warnings, metadata=graph.metadata)
