"""Planner steps for tensors over several ciphertexts (see tensor_map.py, mapped.py).

Used when a model has a convolution after the first layer or a tensor wider than a ciphertext:
the input is encrypted in channel blocks, every convolution writes a (multiplexed) grid chosen
among candidates by the cost model, and a dense layer reads whatever layout it is given and
writes the compact single-ciphertext layout the remaining dense layers and the decoder know.
"""
from __future__ import annotations

import numpy as np

from protected_nn import ir
from protected_nn.compiler.first_gather import gather_cost
from protected_nn.compiler.layout import Layout, next_pow2
from protected_nn.compiler.linear import ZERO_HOMES
from protected_nn.compiler.pooling import orders, pooled_map, rotsum_cost
from protected_nn.compiler.replicate import replicas
from protected_nn.compiler.mapped import (MappedPacking, _best_beta, _decode_key, _terms_grid,
                                          _terms_residue, pack_mapped, residue_period_for)
from protected_nn.compiler.structure import chw
from protected_nn.compiler.tensor_map import (TensorMap, compact_map, conv_output_grids, fold_tree,
                                              grid_map, input_map, period_variants, phase_grids,
                                              phase_tree, polyphase_map)
from protected_nn.errors import PlanError


def wants_mapped(nodes: list[ir.Layer], input_name: str, slots: int) -> bool:
    """A convolution after the first layer, or a tensor wider than one ciphertext."""
    if any(n.size > slots for n in nodes):
        return True
    for n in nodes:
        if isinstance(n, ir.Linear) and input_name not in n.inputs and not n.pool:
            if any(g is not None and not g.is_dense for g in n.geometries):
                return True
    return False


def plan_input(node: ir.Input, slots: int):
    tm = input_map(chw(node.shape), slots)
    if tm is None:
        raise PlanError(f"one channel of the input {tuple(node.shape)} does not fit {slots} slots")
    gather = tm.gather(slots)
    return tm, gather


def as_map(state) -> TensorMap:
    if getattr(state, "tmap", None) is not None:
        return state.tmap
    lay: Layout = state.layout
    return compact_map(lay.n, lay.unit, None)


def _estimate(weights, in_maps, out_map, slots, level, cost) -> float:
    """Cost of a layer writing `out_map` (a grid), or the residue layout when it is None."""
    if out_map is None:
        period = residue_period_for(weights[0].shape[0], 0, slots)
        keys, _, _ = _terms_residue(weights, in_maps, period, slots)
    else:
        keys, _, _ = _terms_grid(weights, in_maps, out_map, slots)
    n_cts = max(t.n_cts for t in in_maps)
    terms = {_decode_key(int(u), len(in_maps), n_cts, slots) for u in np.unique(np.concatenate(keys))}
    beta = _best_beta(terms, slots)
    babies = {(i, ct, k % beta) for (_, i, ct, k) in terms if k % beta}
    giants = {(o, k - k % beta) for (o, _, _, k) in terms if k - k % beta}
    relins = len({(o, k - k % beta) for (o, _, _, k) in terms})
    return ((len(babies) + len(giants)) * cost.rot(level) + relins * cost.relin(level)
            + len(terms) * (cost.mul(level) + cost.step_penalty * 0.15))


def _plain_cost(weights, in_maps, out_map, slots, cost) -> float:
    """`_estimate` when the input is a plaintext: its rotations are numpy rolls, but each rolled
    copy is one encoding (about a product's cost)."""
    keys, _, _ = _terms_grid(weights, in_maps, out_map, slots)
    n_cts = max(t.n_cts for t in in_maps)
    terms = {_decode_key(int(u), len(in_maps), n_cts, slots) for u in np.unique(np.concatenate(keys))}
    beta = _best_beta(terms, slots)
    babies = {(i, ct, k % beta) for (_, i, ct, k) in terms}
    giants = {(o, k - k % beta) for (o, _, _, k) in terms if k - k % beta}
    tree = len(fold_tree(out_map.period, slots)) if out_map.period else 0
    return (len(babies) * cost.mul(0) + len(giants) * cost.rot(0) + tree * out_map.n_cts * cost.rot(1)
            + len(terms) * (cost.mul(0) + cost.step_penalty * 0.15))


def _candidates(node: ir.Linear, in_maps: list[TensorMap], slots, is_output) -> list[TensorMap]:
    """Output grids a convolution may write; [] for dense layers (residue/compact output)."""
    geo = node.geometries[0] if node.geometries else None
    grid = in_maps[0].grid
    if is_output or geo is None or geo.is_dense:
        return []
    poly = _poly_candidates(geo, in_maps, slots)
    if grid is None:
        return poly
    return poly + _grid_candidates(geo, in_maps, grid, slots)


def _grid_candidates(geo, in_maps, grid, slots) -> list[TensorMap]:
    if tuple(grid.chw) != tuple(geo.in_chw):
        return []
    cands = [grid_map(g, n) for g, n in conv_output_grids(grid, geo.out_chw, geo.stride, slots)]
    if len(in_maps) == 1:
        cands += list(phase_grids(grid, geo.out_chw, geo.stride, slots))
    return [v for tm in cands for v in period_variants(tm, slots)]


def _poly_candidates(geo, in_maps, slots) -> list[TensorMap]:
    """Polyphase outputs of a convolution reading a polyphase input (same row, F/stride phases)."""
    poly = in_maps[0].poly
    if poly is None or any(t.poly != poly for t in in_maps) or tuple(poly[0]) != tuple(geo.in_chw):
        return []
    _, factor, row = poly
    sy, sx = geo.stride
    if sy != sx or factor % sy:
        return []
    out = []
    for order in orders(factor // sy):
        tm = polyphase_map(geo.out_chw, factor // sy, row, order, slots)
        if tm is not None:
            out += period_variants(tm, slots)
    return out


def first_layer_candidates(node: ir.Linear, slots: int, max_factor: int) -> list[TensorMap]:
    """Layouts the first layer may write when the gateway lays out the frame (any layout costs
    the same there): polyphase with every power-of-two factor up to `max_factor` (what the
    strided convolutions after it divide), each with its work-slot periods."""
    geo = node.geometries[0] if node.geometries else None
    if geo is None or geo.is_dense:
        return []
    c, h, w = geo.out_chw
    out, factor = [], 1
    while factor <= max(1, max_factor):
        pw = -(-w // factor)
        # a power-of-two row first (ties go to it): a kernel offset dy*row + dx of the next
        # convolution is then a shorter chain of the shared power-of-two rotations
        for row in dict.fromkeys((next_pow2(pw), pw)):
            for order in orders(factor):
                tm = polyphase_map(geo.out_chw, factor, row, order, slots)
                if tm is not None:
                    out += period_variants(tm, slots)
        factor *= 2
    return out


def _own_cost(node, in_maps, tm, slots, level, cost) -> float:
    c = _estimate(node.weights, in_maps, tm, slots, level, cost)
    if tm is not None and tm.phases is not None:   # the tree folding the phases, per output ct
        c += len(phase_tree(tm.phases)) * tm.n_cts * cost.rot(level + 1)
    if tm is not None and tm.period:
        c += len(fold_tree(tm.period, slots)) * tm.n_cts * cost.rot(level + 1)
    return c


def choose_output(node: ir.Linear, in_maps: list[TensorMap], slots, level, cost, is_output,
                  consumer=None):
    """A grid for a convolution's output, else None (residue/compact). Each candidate is
    charged its own cost plus the cheapest cost of `consumer` (the next linear layer, reading
    this output alone) given it: a layout cheap to write can make the next layer pay several
    times more (more ciphertexts to read, fewer aligned channel pairs)."""
    best = _choose(_candidates(node, in_maps, slots, is_output),
                   lambda tm: _own_cost(node, in_maps, tm, slots, level, cost), slots, level, cost,
                   consumer)
    return None if best is None else best[1]


def _choose(cands, own, slots, level, cost, consumer):
    """(cost, candidate) of the cheapest candidate, its own cost plus the next layer's."""
    best = None
    for tm in cands:
        c = own(tm)
        if consumer is not None:
            nxt, nxt_output = consumer
            c += reader_cost(nxt, tm, slots, level + 2, cost, nxt_output)
        if best is None or c < best[0]:
            best = (c, tm)
    return best


def reader_cost(nxt, tm, slots, level, cost, is_output) -> float:
    """The cheapest cost of `nxt` reading `tm` at `level`; a pool is charged the cheaper of its
    rotate-and-add sum (then its reader on the pooled map) and its reader with it fused."""
    if nxt.pool:
        return pool_choice(nxt, tm, slots, level, cost)[0]
    cands = _candidates(nxt, [tm], slots, is_output)
    if not cands:
        return dense_input(nxt, [tm], slots, level, cost, is_output)[0]
    return min(_own_cost(nxt, [tm], t2, slots, level, cost) for t2 in cands)


def dense_input(node, in_maps, slots, level, cost, is_output=False):
    """(cost, tree, input map) of a dense (residue) layer, its input replicated into shifted
    copies by `tree` (compiler/replicate.py) when that is cheaper; tree [] keeps it as it is."""
    best = (_own_cost(node, in_maps, None, slots, level, cost), [], in_maps[0])
    if len(in_maps) != 1 or is_output or in_maps[0] is None:
        return best
    period = residue_period_for(node.size, 0, slots)
    for tree, rep in replicas(in_maps[0], period, slots):
        c = (_own_cost(node, [rep], None, slots, level, cost)
             + len(tree) * rep.n_cts * (cost.rot(level) + cost.step_penalty))
        if c < best[0]:
            best = (c, tree, rep)
    return best


def pool_choice(pool, tm, slots, level, cost):
    """(cost, None) to fuse the pool into its reader, or (cost, (tree, pooled map)) to sum it."""
    fused = reader_cost(pool.fused, tm, slots, level, cost, pool.reader_is_output)
    summed = pooled_map(pool, tm, slots) if tm is not None else None
    if summed is not None:
        tree, pm = summed
        c = (rotsum_cost(tree, tm.n_cts, level, cost)
             + reader_cost(pool.reader, pm, slots, level, cost, pool.reader_is_output))
        if c < fused:
            return c, summed
    return fused, None


def choose_first_layer(node, in_map, slots, cost, max_factor, consumer):
    """The first layer from a frame in clear: ("gather", layout) when laying the frame out per
    product (first_gather.py) beats rotating it (an mlinear step), else ("rotate", None)."""
    gathered = _choose(first_layer_candidates(node, slots, max_factor),
                       lambda tm: gather_cost(node.weights[0], tm, slots, cost), slots, 0, cost,
                       consumer)
    if gathered is None:
        return "rotate", None
    rolled = _choose(_candidates(node, [in_map], slots, False),
                     lambda tm: _plain_cost(node.weights, [in_map], tm, slots, cost), slots, 0, cost,
                     consumer)
    if rolled is not None and rolled[0] <= gathered[0]:
        return "rotate", None
    return "gather", gathered[1]


def plan_mapped_linear(node: ir.Linear, ins, slots, level, cost, known_steps, is_output,
                       consumer=None):
    in_maps = [as_map(s) for s in ins]
    out_map = choose_output(node, in_maps, slots, level, cost, is_output, consumer)
    period, tree = 0, []
    if out_map is None and not is_output and all(getattr(s, "tmap", None) is not None for s in ins):
        _, tree, rep = dense_input(node, in_maps, slots, level, cost)
        in_maps = [rep] if tree else in_maps
    if out_map is None:
        period = residue_period_for(node.size, ZERO_HOMES if is_output else 0, slots)
        if node.size + (ZERO_HOMES if is_output else 0) > slots:
            raise PlanError(f"dense layer {node.name} has {node.size} outputs, more than {slots} slots")
    pack: MappedPacking = pack_mapped(node.weights, node.bias, in_maps, out_map, slots, level, cost,
                                      known_steps, residue_period=period)
    out_layout = Layout(n=node.size, unit=1, period=period, zero_padded=True) if out_map is None else None
    return pack, out_map, out_layout, tree


def step_doc(node, pack: MappedPacking, ins, level, late, add_weight, t_scale, out_scale,
             out_map, out_layout, names=None) -> dict:
    outs = []
    for o, horner in enumerate(pack.outs):
        giants = [{"shift": [int(x) for x in shift],
                   "terms": [[b_idx, add_weight(vec, level, t_scale / ins[pack.sources[pack.babies[b_idx][0]][0]].scale,
                                                node.name, "weight")] for b_idx, vec in terms]}
                  for shift, terms in horner]
        bidx = add_weight(pack.bias[o], level if late else level + 1, t_scale if late else out_scale,
                          node.name, "bias")
        outs.append({"giants": giants, "bias": bidx})
    doc = {"op": "mlinear", "out": node.name, "level": level,
           "inputs": [{"src": name, "switch": level - s.level}
                      for name, s in zip(names or node.inputs, ins)],
           "sources": [[int(i), int(c)] for i, c in pack.sources],
           "babies": [[int(s), int(src), [int(x) for x in sts]] for s, _, src, sts in pack.babies],
           "outs": outs, "tree": [int(t) for t in pack.tree], "rescale_last": late,
           "n_cts": len(outs)}
    if out_layout is not None:
        doc["layout"] = out_layout.to_dict()
    return doc


def floor_products(node: ir.Linear, slots: int) -> float:
    """(trained weights x output positions they are applied at) / slots, from the structure. A
    layer with a public pool fused into it counts its own trained weights, not the composition
    (a 5x5 convolution after a 2x2 pool has 25 weights per channel pair, not a 10x10 kernel's)."""
    total = 0.0
    for W in (node.floor_of or node).weights:
        total += W.nnz
    return total / slots


def chain_factor(node, consumers) -> int:
    """Product of the strides of the convolutions after `node` (through activations), up to the
    first dense layer: the polyphase factor that keeps all of them dense."""
    factor, cur = 1, node
    while True:
        nxt = next_linear(cur, consumers)
        geo = nxt.geometries[0] if nxt is not None and nxt.geometries else None
        if geo is None or geo.is_dense or geo.stride[0] != geo.stride[1]:
            return factor
        factor *= geo.stride[0]
        cur = nxt


def next_linear(node, consumers):
    """The linear layer that alone reads `node` through element-wise activations, if any."""
    cur = node
    while len(consumers[cur.name]) == 1:
        cur = consumers[cur.name][0]
        if isinstance(cur, ir.Linear):
            return cur if len(cur.inputs) == 1 else None
        if not isinstance(cur, (ir.Square, ir.Poly)):
            return None
    return None
