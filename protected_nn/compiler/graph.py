"""The compiler's lowering of the IR (ir.py): the planner reads ir layers, with no Add. An
elementwise Add of encrypted tensors (residual joins, Sum) becomes a multi-input ir.Linear,
y = sum_i W_i x_i + b, and the IR's fusion pass (ir.fold_linear) folds any single-consumer
linear producer into it, so a residual join costs no extra level. Public pools are kept apart
where the planner may run them as rotate-and-add sums, and each map's per-input geometry is
filled in."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import scipy.sparse as sp

from protected_nn import ir
from protected_nn.compiler.structure import close_pattern
from protected_nn.errors import ModelError


def lower(graph: ir.Graph) -> tuple[list[ir.Layer], str]:
    """Copies of the IR's layers, Adds as multi-input linear maps, linear producers folded,
    pools kept apart or folded, geometries filled. The IR graph itself is not changed."""
    nodes: list[ir.Layer] = []
    for layer in graph.layers:
        src = list(layer.sources) or [layer.name]
        if isinstance(layer, ir.Linear):     # a fresh map: the compiler's fields start unset
            nodes.append(ir.Linear(layer.name, list(layer.inputs), layer.shape, src,
                                   weights=[sp.csr_matrix(w) for w in layer.weights],
                                   bias=np.asarray(layer.bias, float), pool=bool(layer.pool)))
        elif isinstance(layer, ir.Add):
            eye = sp.identity(layer.size, format="csr")
            nodes.append(ir.Linear(layer.name, list(layer.inputs), layer.shape, src,
                                   weights=[eye] * len(layer.inputs), bias=np.zeros(layer.size)))
        elif isinstance(layer, ir.Poly):
            nodes.append(replace(layer, inputs=list(layer.inputs), sources=src,
                                 coeffs=np.asarray(layer.coeffs, float),
                                 fit_range=tuple(layer.fit_range)))
        elif isinstance(layer, (ir.Input, ir.Square)):
            nodes.append(replace(layer, inputs=list(layer.inputs), sources=src,
                                 shape=tuple(layer.shape)))
        else:
            raise ModelError(f"the compiler does not know IR layer {type(layer).__name__}")
    nodes = ir.fold_linear(nodes, graph.output)      # pools kept apart for now
    _keep_pools(nodes, graph.output, graph.input_name)
    while True:
        nodes = ir.fold_linear(nodes, graph.output)  # the pools not kept
        if not _drop_stale_pools(nodes):
            break
    shapes = {layer.name: tuple(layer.shape) for layer in graph.layers}
    for node in nodes:
        if isinstance(node, ir.Linear):
            _close(node, shapes)
            if node.fused is not None:
                _close(node.fused, shapes)
    return nodes, graph.output


def _close(node: ir.Linear, shapes) -> None:
    closed = [close_pattern(W, shapes[src], shapes[node.name])
              for W, src in zip(node.weights, node.inputs)]
    node.weights = [w for w, _ in closed]
    node.geometries = [g for _, g in closed]


def _keep_pools(nodes: list[ir.Layer], output: str, input_name: str) -> None:
    """A public pool read by one linear layer, itself reading a non-linear node (an activation),
    stays a node of its own: its weights become the 0/1 window sum, its 1/count scale moves into
    the consumer's weights, and `fused` holds the consumer with the pool folded in (today's
    behaviour), so the planner can take either. Any other pool is folded like any linear map."""
    by_name = {n.name: n for n in nodes}
    readers: dict[str, list[ir.Layer]] = {n.name: [] for n in nodes}
    for n in nodes:
        for i in n.inputs:
            readers[i].append(n)
    for p in nodes:
        if not (isinstance(p, ir.Linear) and p.pool):
            continue
        users = readers[p.name]
        src = by_name[p.inputs[0]] if len(p.inputs) == 1 else None
        W = p.weights[0]
        scale = np.asarray(W.max(axis=1).todense()).ravel()
        keep = (p.name != output and len(users) == 1 and isinstance(users[0], ir.Linear)
                and not users[0].pool and p.inputs != [input_name]
                and isinstance(src, (ir.Square, ir.Poly)) and not np.any(p.bias)
                and np.allclose(W.data, scale[W.tocoo().row]))      # equal weights per window
        if not keep:
            p.pool = False
            continue
        user = users[0]
        k = user.inputs.index(p.name)
        user.weights[k] = sp.csr_matrix(user.weights[k] @ sp.diags(scale))
        p.weights = [sp.csr_matrix((np.ones(W.nnz), W.indices, W.indptr), shape=W.shape)]
        alt = ir.Linear(user.name, list(user.inputs), user.shape, list(user.sources),
                        weights=list(user.weights), bias=user.bias.copy())
        ir.absorb(alt, k, p)
        alt.floor_of = user
        p.fused, p.reader, p.reader_is_output = alt, user, user.name == output


def _drop_stale_pools(nodes: list[ir.Layer]) -> bool:
    """A kept pool whose reader was folded into another map since is folded like any linear map
    (its weights and the reader's still compose to the pool: W D S = W A)."""
    stale = False
    for p in nodes:
        if isinstance(p, ir.Linear) and p.pool:
            readers = [n for n in nodes if p.name in n.inputs]
            if len(readers) != 1 or readers[0] is not p.reader:
                p.pool, p.fused, p.reader = False, None, None
                stale = True
    return stale
