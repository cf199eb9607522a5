"""IR graph -> Plan: parameters, per-layer packing, levels, exact scales, rotation steps.

The plan is a short list of steps the gateway executes (runtime/evaluator.py) plus the clear
weight vectors the owner encrypts (runtime/owner.py). Scales are tracked exactly: a product with
an encrypted weight at level l uses weight scale  delta * q_l / s_in,  so after dropping the
prime q_l every linear layer returns to the canonical scale delta.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from protected_nn import ir
from protected_nn.ckks.context import primes_of
from protected_nn.ckks.params import CkksParams, HE_STANDARD_128, choose_params
from protected_nn.compiler.graph import lower
from protected_nn.compiler import mapped_plan as MP
from protected_nn.compiler.direct_steps import direct_long_chains
from protected_nn.compiler.first_gather import gather_step
from protected_nn.compiler.layout import CostModel, Layout, next_pow2
from protected_nn.compiler.linear import first_layer_free_layout, plan_linear, replication_shifts
from protected_nn.compiler.pooling import rotsum_step
from protected_nn.compiler.poly_plan import plan_poly as _poly, trim_coeffs
from protected_nn.compiler.state import PlanState as _State
from protected_nn.errors import PlanError
from protected_nn.runtime.plan_format import PLAN_VERSION, decode_array, encode_array  # noqa: F401
from protected_nn.runtime.plan_links import step_rotation_levels
from protected_nn.runtime.steps import parse_steps
RESULT_PRIME_BITS = 31  # a result keeps one prime: 2 x 8192 x 31 bits = 63.5 KB bit-packed


def final_scale_bits(output_bits: int) -> int:
    """Scale of the result: the first prime must hold it times the output headroom. Decryption
    noise (~2^10 after the last rescale) relative to the output range does not depend on this
    choice, because larger outputs leave fewer bits for the scale and tolerate coarser steps."""
    return max(16, min(28, RESULT_PRIME_BITS - output_bits))


@dataclass
class WeightSpec:
    values: np.ndarray   # slot vector
    level: int
    scale: float
    layer: str
    kind: str            # "weight" | "bias"


@dataclass
class Plan:
    doc: dict                                   # JSON-able: everything the gateway needs
    weights: list[WeightSpec] = field(default_factory=list)
    layer_stats: list[dict] = field(default_factory=list)


def poly_depth(coeffs: np.ndarray) -> int:
    c = trim_coeffs(coeffs)
    deg = max(1, int(np.max(np.nonzero(c)[0])) if np.any(c[1:]) else 1)
    return int(math.ceil(math.log2(deg))) + 1 if deg > 1 else 1


def node_depths(nodes: list[ir.Layer]) -> dict[str, int]:
    depth: dict[str, int] = {}
    for node in nodes:
        if isinstance(node, ir.Input):
            depth[node.name] = 0
        elif isinstance(node, ir.Linear):
            depth[node.name] = max(depth[i] for i in node.inputs) + 1
        elif isinstance(node, ir.Square):
            depth[node.name] = depth[node.inputs[0]] + 1
        elif isinstance(node, ir.Poly):
            depth[node.name] = depth[node.inputs[0]] + poly_depth(node.coeffs)
        if getattr(node, "pool", False):   # a rotate-and-add sum or fused: no level of its own
            depth[node.name] = depth[node.inputs[0]]
    return depth


def compile_graph(graph: ir.Graph, output_bits: int, params: CkksParams | None = None) -> Plan:
    nodes, output = lower(graph)
    depth = node_depths(nodes)[output]
    if params is None:
        last_error = None
        for n in sorted(HE_STANDARD_128):
            try:
                final = final_scale_bits(output_bits)
                params = choose_params(depth, n // 2, output_bits, final_scale_bits=final)
                if params.n != n:
                    continue
                return _compile_best(nodes, output, graph, params)
            except PlanError as exc:
                last_error = exc
        raise last_error or PlanError("no 128-bit parameters fit the model")
    return _compile_best(nodes, output, graph, params)


def estimated_ms(plan: Plan, params: CkksParams) -> float:
    cost = CostModel(params.n, params.depth)
    ms = sum(s["rotations"] * cost.rot(s["level"] - 1) + s["relins"] * cost.relin(s["level"] - 1)
             + s["products"] * cost.mul(s["level"] - 1) for s in plan.layer_stats)
    ms += cost.encrypt() * (1 if plan.doc["input"].get("plain") else plan.doc["input"]["num_cts"])
    # bundle: each weight ciphertext and Galois key is storage and load time on the gateway
    return ms + len(plan.weights) * cost.step_penalty * 0.15 + len(plan.doc["rotation_steps"]) * cost.step_penalty


def _compile_best(nodes, output, graph, params) -> Plan:
    """Multi-ciphertext packing when the model needs it (wide tensors); when both packings
    apply, the one the cost model finds cheaper (tiny CNNs stay on the single-ciphertext path)."""
    if not MP.wants_mapped(nodes, graph.input_name, params.slots):
        return _compile(nodes, output, graph, params, mapped=False)
    mapped = _compile(nodes, output, graph, params, mapped=True)
    if any(n.size > params.slots for n in nodes):
        return mapped
    try:
        legacy = _compile(nodes, output, graph, params, mapped=False)
    except (PlanError, ValueError):
        return mapped
    return mapped if estimated_ms(mapped, params) < estimated_ms(legacy, params) else legacy


def plan_output(plan) -> str:
    return plan.doc.get("_output", "")


def _node(nodes, name):
    return next(n for n in nodes if n.name == name)


def _compile(nodes, output, graph: ir.Graph, params: CkksParams, mapped: bool,
             plain_input: bool = True) -> Plan:
    slots = params.slots
    primes = primes_of(params)
    data_primes = primes[:-1]
    depth_max = len(data_primes) - 1
    delta = float(2 ** params.scale_bits)
    cost = CostModel(params.n, depth_max)
    plan = Plan(doc={"_output": output})
    steps: list[dict] = []
    states: dict[str, _State] = {}
    rot_steps: set[int] = set()
    consumers = {n.name: [c for c in nodes if n.name in c.inputs] for n in nodes}

    def drop_prime(level: int) -> int:
        if level >= depth_max:
            raise PlanError(f"the model needs more than {depth_max} levels")
        return data_primes[depth_max - level]

    def add_weight(values, level, scale, layer, kind) -> int:
        plan.weights.append(WeightSpec(np.asarray(values, float), level, scale, layer, kind))
        return len(plan.weights) - 1

    final_delta = float(2 ** (2 * params.scale_bits - params.qi_sizes[1])) if params.depth else delta

    def target(node) -> float:
        """Scale a layer's output returns to: delta, or a smaller one for the result."""
        return final_delta if node.name == output else delta

    input_doc = None
    replaced: dict[str, ir.Linear] = {}       # readers of fused pools -> the fused map
    for node in nodes:
        node = replaced.get(node.name, node)
        if isinstance(node, ir.Linear) and node.pool:
            src = states[node.inputs[0]]
            summed = MP.pool_choice(node, src.tmap, slots, src.level, cost)[1] if src.tmap else None
            if summed is None:
                replaced[node.reader.name] = node.fused
            else:
                steps.append(rotsum_step(node, summed[0], src.level, plan.layer_stats, src.tmap))
                rot_steps.update(summed[0])
                src = _State(None, src.level, src.scale, summed[1])
            states[node.name] = src
            continue
        if node.size > slots and not mapped:
            raise PlanError(f"layer {node.name} has {node.size} values, more than {slots} slots")
        if isinstance(node, ir.Input):
            if mapped:
                tm, gather = MP.plan_input(node, slots)
                input_doc = {"free": False, "doc": {
                    "name": node.name, "shape": list(node.shape), "size": node.size, "free": False,
                    "gather": encode_array(gather), "num_cts": tm.n_cts}}
                states[node.name] = _State(None, 0, delta, tm)
                continue
            input_doc, state = _plan_input(node, consumers[node.name], slots, cost, delta)
            states[node.name] = state
            continue
        if isinstance(node, ir.Linear) and any(states[i].tmap is not None for i in node.inputs):
            nxt = MP.next_linear(node, consumers)
            if (plain_input and node.inputs == [graph.input_name] and node.name != output
                    and len(consumers[graph.input_name]) == 1):
                how, tm = MP.choose_first_layer(node, states[graph.input_name].tmap, slots, cost,
                                                MP.chain_factor(node, consumers),
                                                None if nxt is None else (nxt, nxt.name == output))
                if how == "gather":
                    states[node.name] = _gather_first(node, tm, input_doc, plan, steps, add_weight,
                                                      drop_prime, delta, rot_steps, slots)
                    continue
            states[node.name] = _mapped_linear(node, states, slots, cost, plan, steps, add_weight,
                                               drop_prime, target(node), rot_steps,
                                               node.name == output,
                                               None if nxt is None else (nxt, nxt.name == output))
            continue
        if isinstance(node, ir.Linear) and node.inputs[0] == graph.input_name and input_doc.get("free"):
            states[node.name] = _first_layer(node, input_doc, plan, steps, add_weight,
                                             drop_prime, target(node), rot_steps, slots, cost, delta)
            continue
        if isinstance(node, ir.Linear):
            states[node.name] = _linear(node, states, slots, cost, plan, steps, add_weight,
                                        drop_prime, target(node), rot_steps, node.name == output)
        elif isinstance(node, ir.Square):
            src = states[node.inputs[0]]
            q = drop_prime(src.level)
            steps.append({"op": "square", "src": node.inputs[0], "out": node.name, "level": src.level})
            states[node.name] = _State(src.layout, src.level + 1, src.scale * src.scale / q, src.tmap)
            plan.layer_stats.append({"layer": node.name, "op": "x*x", "level": src.level + 1,
                                     "shape": [node.size, node.size],
                                     "products": 1, "rotations": 0, "relins": 1, "sources": node.sources})
        elif isinstance(node, ir.Poly):
            states[node.name] = _poly(node, states, steps, plan, drop_prime, target(node))
    direct_long_chains(steps, rot_steps, slots, plan.layer_stats)
    out_state = states[output]
    in_node = graph.input_name
    # The frame stays in clear when only linear maps read it (the first layer's products are then
    # encrypted weight x plaintext; runtime/evaluator.py re-randomizes the result).
    input_doc["doc"]["plain"] = bool(plain_input) and all(
        isinstance(c, ir.Linear) for c in consumers[in_node]) and (
        input_doc["doc"]["free"] or states[in_node].tmap is not None)
    if out_state.layout is None:
        raise PlanError("the model's output must come from a dense or linear layer "
                        "(a flattened head), not a multi-ciphertext tensor")
    plan.doc = {
        "version": PLAN_VERSION,
        "ckks": params.to_dict() | {"primes": [str(p) for p in primes], "delta": delta},
        "input": input_doc["doc"],
        "steps": steps,
        "rotation_steps": sorted(rot_steps),
        "output": {"src": output, "layout": out_state.layout.to_dict(), "level": out_state.level,
                   "shape": list(graph.output_shape), "scale": out_state.scale},
        "weights": [{"level": w.level, "scale": w.scale, "layer": w.layer, "kind": w.kind}
                    for w in plan.weights],
    }
    typed = parse_steps(steps)   # the gateway's reading of the steps: a malformed one fails here
    # Exactly the steps some rotation uses: direct_long_chains can leave a power-of-two step that
    # no chain reads any more, and babies of the clear frame are rolled without keys.
    inp = plan.doc["input"]
    plain = inp.get("name") if inp.get("plain") and not inp.get("free") else None
    plan.doc["rotation_steps"] = sorted(step_rotation_levels(typed, slots, plain))
    return plan


def _plan_input(node: ir.Input, consumers, slots, cost, delta):
    n = node.size
    period = next_pow2(n)
    compact = Layout(n=n, unit=1, period=period, zero_padded=True)
    free = (len(consumers) == 1 and isinstance(consumers[0], ir.Linear)
            and consumers[0].inputs == [node.name])
    if free:   # compare im2col-style free layout with a compact input + generic packing
        lin = consumers[0]
        c_free = first_layer_free_layout(lin.weights[0], lin.bias, slots, cost)[0]
        c_compact = cost.encrypt() + plan_linear(lin.weights, lin.bias, [compact], slots, 0, cost,
                                                 set()).cost_ms
        free = c_free < c_compact
    gather = np.where(np.arange(slots) % period < n, np.arange(slots) % period, -1)[None, :]
    doc = {"name": node.name, "shape": list(node.shape), "size": n, "free": free,
           "gather": encode_array(gather), "num_cts": 1, "layout": compact.to_dict()}
    return {"free": free, "doc": doc}, _State(compact, 0, delta)


def _first_layer(node, input_doc, plan, steps, add_weight, drop_prime, delta, rot_steps, slots, cost,
                 in_scale):
    _, gather, wvecs, tree, bias_vec, out = first_layer_free_layout(
        node.weights[0], node.bias, slots, cost, keep_zero_slots=node.name == plan_output(plan))
    q = drop_prime(0)
    t_scale = delta * q
    w_scale = t_scale / in_scale
    widx = [add_weight(w, 0, w_scale, node.name, "weight") for w in wvecs]
    out_scale = t_scale / q
    late = node.name == plan_output(plan)
    bidx = add_weight(bias_vec, 0 if late else 1, t_scale if late else out_scale, node.name, "bias")
    input_doc["doc"].update({"gather": encode_array(gather), "num_cts": len(wvecs)})
    steps.append({"op": "first_linear", "out": node.name, "weights": widx, "tree": tree,
                  "bias": bidx, "level": 0, "rescale_last": late, "layout": out.to_dict()})
    rot_steps.update(s % slots for s in tree)
    plan.layer_stats.append({"layer": node.name, "op": "linear (free input layout)", "level": 1,
                             "products": len(wvecs), "rotations": len(tree), "relins": 1,
                             "input_cts": len(wvecs), "weight_cts": len(wvecs) + 1,
                             "sources": node.sources, "shape": list(node.weights[0].shape)})
    return _State(out, 1, out_scale)


def _linear(node, states, slots, cost, plan, steps, add_weight, drop_prime, delta, rot_steps,
            is_output=False):
    ins = [states[i] for i in node.inputs]
    level = max(s.level for s in ins)
    pack = plan_linear(node.weights, node.bias, [s.layout for s in ins], slots, level, cost, rot_steps,
                       keep_zero_slots=is_output)
    q = drop_prime(level)
    t_scale = delta * q
    out_scale = t_scale / q
    inputs_doc = []
    for s, name, reps in zip(ins, node.inputs, pack.replications):
        inputs_doc.append({"src": name, "switch": level - s.level,
                           "replicate": replication_shifts(s.layout, reps)})
    giants = []
    for shift, terms in pack.giants:
        giants.append({"shift": [int(x) for x in shift], "terms": [
            [b_idx, add_weight(vec, level, t_scale / ins[pack.babies[b_idx][0]].scale, node.name, "weight")]
            for b_idx, vec in terms]})
    # The result's scale is small (FINAL_SCALE_BITS): rotating after that rescale would add
    # key-switching noise of the order of 2^-20. The output layer sums its tree first.
    late = is_output
    bidx = add_weight(pack.bias, level if late else level + 1, t_scale if late else out_scale,
                      node.name, "bias")
    steps.append({"op": "linear", "out": node.name, "level": level, "inputs": inputs_doc,
                  "babies": [[i, src, [int(x) for x in sts]] for i, _, src, sts in pack.babies],
                  "giants": giants, "rescale_last": late, "layout": pack.out_layout.to_dict(),
                  "tree": pack.tree, "bias": bidx})
    rot_steps.update(pack.steps)
    plan.layer_stats.append({"layer": node.name, "op": "linear", "level": level + 1,
                             "products": pack.products, "rotations": pack.rotations,
                             "relins": pack.relins, "weight_cts": pack.products + 1,
                             "sources": node.sources, "group": pack.g,
                             "shape": [node.size, sum(w.shape[1] for w in node.weights)]})
    return _State(pack.out_layout, level + 1, out_scale)


def _gather_first(node, out_map, input_doc, plan, steps, add_weight, drop_prime, delta, rot_steps,
                  slots):
    """The first layer writing `out_map` from a frame laid out per product (first_gather.py)."""
    step, gather, n_products, stats = gather_step(node, out_map, add_weight, delta * drop_prime(0),
                                                  delta, slots)
    input_doc["free"] = True
    input_doc["doc"].update({"free": True, "gather": encode_array(gather), "num_cts": n_products})
    steps.append(step)
    rot_steps.update(step["tree"])
    plan.layer_stats.append(stats | {"floor_products": round(MP.floor_products(node, slots), 1)})
    return _State(None, 1, delta, out_map)


def _mapped_linear(node, states, slots, cost, plan, steps, add_weight, drop_prime, delta, rot_steps,
                   is_output, consumer=None):
    ins = [states[i] for i in node.inputs]
    level = max(s.level for s in ins)
    pack, out_map, out_layout, tree = MP.plan_mapped_linear(node, ins, slots, level, cost,
                                                            rot_steps, is_output, consumer)
    q = drop_prime(level)
    t_scale = delta * q
    out_scale = t_scale / q
    names = list(node.inputs)
    if tree:      # shifted copies of the input first (compiler/replicate.py)
        names = [f"{node.inputs[0]}~copies"]
        steps.append({"op": "rotsum", "src": node.inputs[0], "out": names[0],
                      "level": ins[0].level, "tree": tree})
        rot_steps.update(tree)
        pack.rotations += len(tree) * as_cts(ins[0])
    steps.append(MP.step_doc(node, pack, ins, level, is_output, add_weight, t_scale, out_scale,
                             out_map, out_layout, names))
    rot_steps.update(pack.steps)
    floor = MP.floor_products(node, slots)
    plan.layer_stats.append({"layer": node.name, "op": "conv (grid)" if out_map is not None else
                             "dense (residue)", "level": level + 1,
                             "products": pack.products, "rotations": pack.rotations,
                             "relins": pack.relins, "weight_cts": pack.products + len(pack.bias),
                             "floor_products": round(floor, 1),
                             "in_cts": [as_cts(s) for s in ins],
                             "out_cts": out_map.n_cts if out_map is not None else 1,
                             "sources": node.sources,
                             "shape": [node.size, sum(w.shape[1] for w in node.weights)]})
    return _State(out_layout, level + 1, out_scale, out_map)


def as_cts(state) -> int:
    return state.tmap.n_cts if state.tmap is not None else 1
