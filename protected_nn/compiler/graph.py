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
    pool: bool = False            # a public window SUM (weights 0/1; see compiler/pooling.py)
    fused: "MLinear | None" = None   # on a pool: its reader with the pool folded in
    reader: "MLinear | None" = None  # on a pool: the linear map that reads it
    reader_is_output: bool = False
    floor_of: "MLinear | None" = None   # on a fused reader: the map whose trained weights count


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
                                 weights=[sp.csr_matrix(layer.W)], bias=np.asarray(layer.b, float),
                                 pool=bool(layer.pool)))
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
    nodes = _fold_linear_producers(nodes, graph.output)      # pools kept apart for now
    _keep_pools(nodes, graph.output, graph.input_name)
    while True:
        nodes = _fold_linear_producers(nodes, graph.output)  # the pools not kept
        if not _drop_stale_pools(nodes):
            break
    shapes = {layer.name: tuple(layer.shape) for layer in graph.layers}
    for node in nodes:
        if isinstance(node, MLinear):
            _close(node, shapes)
            if node.fused is not None:
                _close(node.fused, shapes)
    return nodes, graph.output


def _close(node: MLinear, shapes) -> None:
    closed = [close_pattern(W, shapes[src], shapes[node.name])
              for W, src in zip(node.weights, node.inputs)]
    node.weights = [w for w, _ in closed]
    node.geometries = [g for _, g in closed]


def _keep_pools(nodes: list[Node], output: str, input_name: str) -> None:
    """A public pool read by one linear layer, itself reading a non-linear node (an activation),
    stays a node of its own: its weights become the 0/1 window sum, its 1/count scale moves into
    the consumer's weights, and `fused` holds the consumer with the pool folded in (today's
    behaviour), so the planner can take either. Any other pool is folded like any linear map."""
    by_name = {n.name: n for n in nodes}
    readers: dict[str, list[Node]] = {n.name: [] for n in nodes}
    for n in nodes:
        for i in n.inputs:
            readers[i].append(n)
    for p in nodes:
        if not (isinstance(p, MLinear) and p.pool):
            continue
        users = readers[p.name]
        src = by_name[p.inputs[0]] if len(p.inputs) == 1 else None
        W = p.weights[0]
        scale = np.asarray(W.max(axis=1).todense()).ravel()
        keep = (p.name != output and len(users) == 1 and isinstance(users[0], MLinear)
                and not users[0].pool and p.inputs != [input_name]
                and isinstance(src, (SquareNode, PolyNode)) and not np.any(p.bias)
                and np.allclose(W.data, scale[W.tocoo().row]))      # equal weights per window
        if not keep:
            p.pool = False
            continue
        user = users[0]
        k = user.inputs.index(p.name)
        user.weights[k] = sp.csr_matrix(user.weights[k] @ sp.diags(scale))
        p.weights = [sp.csr_matrix((np.ones(W.nnz), W.indices, W.indptr), shape=W.shape)]
        alt = MLinear(user.name, list(user.inputs), user.size, list(user.sources),
                      weights=list(user.weights), bias=user.bias.copy())
        _absorb(alt, k, p)
        alt.floor_of = user
        p.fused, p.reader, p.reader_is_output = alt, user, user.name == output


def _drop_stale_pools(nodes: list[Node]) -> bool:
    """A kept pool whose reader was folded into another map since is folded like any linear map
    (its weights and the reader's still compose to the pool: W D S = W A)."""
    stale = False
    for p in nodes:
        if isinstance(p, MLinear) and p.pool:
            readers = [n for n in nodes if p.name in n.inputs]
            if len(readers) != 1 or readers[0] is not p.reader:
                p.pool, p.fused, p.reader = False, None, None
                stale = True
    return stale


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
                if isinstance(prod, MLinear) and uses[src] == 1 and src != output and not prod.pool:
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
