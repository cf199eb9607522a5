"""IR -> the compiler's node list. The only new idea here: an elementwise Add of encrypted tensors
(residual joins, Sum) becomes part of a multi-input linear map, y = sum_i W_i x_i + b, and any
single-consumer linear producer is folded into it, so a residual join costs no extra level."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from protected_nn import ir
from protected_nn.compiler.structure import close_pattern
from protected_nn.errors import ModelError


@dataclass
class Node:
    name: str
    inputs: list[str]
    size: int
    sources: list[str] = field(default_factory=list)


@dataclass
class MLinear(Node):
    weights: list[sp.csr_matrix] = field(default_factory=list)  # one (size x input size) per input
    bias: np.ndarray = None
    geometries: list = field(default_factory=list)   # per input: structure.Geometry or None


@dataclass
class SquareNode(Node):
    pass


@dataclass
class PolyNode(Node):
    coeffs: np.ndarray = None
    op: str = ""
    fit_range: tuple = (0.0, 0.0)
    fit_max_error: float = 0.0


@dataclass
class InputNode(Node):
    shape: tuple = ()


def lower(graph: ir.Graph) -> tuple[list[Node], str]:
    """Turn the IR into nodes, Adds into multi-input linear maps, and fold linear producers."""
    nodes: list[Node] = []
    for layer in graph.layers:
        src = list(layer.sources) or [layer.name]
        if isinstance(layer, ir.Input):
            nodes.append(InputNode(layer.name, [], layer.size, src, shape=tuple(layer.shape)))
        elif isinstance(layer, ir.Linear):
            nodes.append(MLinear(layer.name, list(layer.inputs), layer.size, src,
                                 weights=[sp.csr_matrix(layer.W)], bias=np.asarray(layer.b, float)))
        elif isinstance(layer, ir.Add):
            eye = sp.identity(layer.size, format="csr")
            nodes.append(MLinear(layer.name, list(layer.inputs), layer.size, src,
                                 weights=[eye] * len(layer.inputs), bias=np.zeros(layer.size)))
        elif isinstance(layer, ir.Square):
            nodes.append(SquareNode(layer.name, list(layer.inputs), layer.size, src))
        elif isinstance(layer, ir.Poly):
            nodes.append(PolyNode(layer.name, list(layer.inputs), layer.size, src,
                                  coeffs=np.asarray(layer.coeffs, float), op=layer.op,
                                  fit_range=tuple(layer.fit_range), fit_max_error=layer.fit_max_error))
        else:
            raise ModelError(f"the compiler does not know IR layer {type(layer).__name__}")
    nodes = _fold_linear_producers(nodes, graph.output)
    shapes = {layer.name: tuple(layer.shape) for layer in graph.layers}
    for node in nodes:
        if isinstance(node, MLinear):
            closed = [close_pattern(W, shapes[src], shapes[node.name])
                      for W, src in zip(node.weights, node.inputs)]
            node.weights = [w for w, _ in closed]
            node.geometries = [g for _, g in closed]
    return nodes, graph.output


def _fold_linear_producers(nodes: list[Node], output: str) -> list[Node]:
    changed = True
    while changed:
        changed = False
        by_name = {n.name: n for n in nodes}
        uses: dict[str, int] = {n.name: 0 for n in nodes}
        for n in nodes:
            for i in n.inputs:
                uses[i] += 1
        for node in nodes:
            if not isinstance(node, MLinear):
                continue
            for k, src in enumerate(node.inputs):
                prod = by_name[src]
                if isinstance(prod, MLinear) and uses[src] == 1 and src != output:
                    _absorb(node, k, prod)
                    nodes = [n for n in nodes if n is not prod]
                    changed = True
                    break
            if changed:
                break
    return nodes


def _absorb(node: MLinear, k: int, prod: MLinear) -> None:
    """node's input k is prod's output: substitute W_k (sum_i P_i x_i + p) into node."""
    wk = node.weights[k]
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
