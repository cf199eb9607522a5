"""Write the adapted model: the owner's own ONNX graph with the trained initializers, each
activation node replaced by its polynomial and each MaxPool by an AveragePool - only ops protect
supports (Add, Mul, Pow, Sum, AveragePool, plus what was there), metadata carried over and the
adaptation recorded under `fhe_edge.adapt`.

A degree-2 polynomial is written in completed-square form, sign(w2) (sqrt|w2| (x + s))^2 + c
per channel: Add(shift) and Mul(root) fold into the previous linear layer and Mul(sign)+Add(offset)
into the next one, so the activation costs exactly one x*x - the price of a square-activation
model. A nearly linear channel has its vertex far outside the range: |s| is then large and w2
small; with the root taken before the square the encrypted value stays the size of the
channel's contribution (protect's fidelity check measures the precision) up to MAX_VERTEX
half-widths; a vertex beyond is moved there (see below). Other
degrees sum the powers of x - mid with per-channel coefficients: a multi-input linear layer.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import helper, numpy_helper

from backend_decryptor.adapt.onnx_graph import OnnxGraph, attributes

META_KEY = "fhe_edge.adapt"
MAX_VERTEX = 1000.0   # a vertex farther than this (in half-widths) is moved there


def _const(name: str, value: np.ndarray, dtype) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(value, dtype=dtype), name=name)


def _channel_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Broadcast shape of a per-channel constant for a tensor of this (batch-1) shape."""
    if len(shape) <= 1:
        return (-1,)
    return (1, -1) + (1,) * (len(shape) - 2)


def polynomial_nodes(node, act, shape, dtype) -> tuple[list, list, str]:
    """Nodes + initializers computing act(node.input[0]) into node.output[0]; returns the form."""
    x, y, p = node.input[0], node.output[0], f"{node.name}_adapt"
    cs = _channel_shape(shape)
    mid = act.center.numpy().astype(np.float64)
    c = act.power_coefficients()           # in (x - mid)
    nodes, inits = [], []
    half = act.radius.numpy().astype(np.float64)
    if act.degree == 2:
        w1, w2 = c[:, 1], c[:, 2].copy()
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.where(w2 != 0, w1 / (2 * w2), np.inf)   # w2 (u + s)^2 + c0 - w2 s^2, u = x - mid
        s = np.where((w1 == 0) & (w2 == 0), 0.0, s)
        far = np.abs(s) > MAX_VERTEX * half
        # a nearly linear channel (w2 ~ 0): move its vertex to MAX_VERTEX half-widths, i.e.
        # w2' = w1 / (2 s): the linear term is kept, the output moves by at most
        # |w1| half / (2 MAX_VERTEX) - 0.05% of the channel's linear swing
        s[far] = np.sign(w1[far]) * np.where(w2[far] != 0, np.sign(w2[far]), 1.0) * MAX_VERTEX * half[far]
        w2[far] = w1[far] / (2 * s[far])
        # sign(w2) (sqrt|w2| (u + s))^2: the square's output is as large as the channel's own
        # contribution (|w2| (u + s)^2), not (u + s)^2 - for a far vertex that is the difference
        # between a value CKKS holds and an overflow (a vertex 8600 away: 7e7 vs 4e3)
        inits += [_const(p + "_shift", (s - mid).reshape(cs), dtype),
                  _const(p + "_root", np.sqrt(np.abs(w2)).reshape(cs), dtype),
                  _const(p + "_sign", np.where(w2 < 0, -1.0, 1.0).reshape(cs), dtype),
                  _const(p + "_offset", (c[:, 0] - w2 * s * s).reshape(cs), dtype)]
        nodes += [helper.make_node("Add", [x, p + "_shift"], [p + "_u"], name=p + "_shift"),
                  helper.make_node("Mul", [p + "_u", p + "_root"], [p + "_v"], name=p + "_root"),
                  helper.make_node("Mul", [p + "_v", p + "_v"], [p + "_sq"], name=p + "_square"),
                  helper.make_node("Mul", [p + "_sq", p + "_sign"], [p + "_signed"], name=p + "_sign"),
                  helper.make_node("Add", [p + "_signed", p + "_offset"], [y], name=p + "_offset")]
        moved = f" ({int(far.sum())} nearly linear channel(s): vertex moved to {MAX_VERTEX:g} half-widths)"
        return nodes, inits, "completed square" + (moved if far.any() else "")
    inits.append(_const(p + "_center", (-mid).reshape(cs), dtype))
    nodes.append(helper.make_node("Add", [x, p + "_center"], [p + "_u"], name=p + "_center"))
    terms = []
    for k in range(1, act.degree + 1):
        base = p + "_u"
        if k >= 2:
            base = f"{p}_u{k}"
            if k == 2:
                nodes.append(helper.make_node("Mul", [p + "_u", p + "_u"], [base], name=base))
            else:
                inits.append(_const(f"{p}_k{k}", np.array(float(k)), dtype))
                nodes.append(helper.make_node("Pow", [p + "_u", f"{p}_k{k}"], [base], name=base))
        inits.append(_const(f"{p}_c{k}", c[:, k].reshape(cs), dtype))
        nodes.append(helper.make_node("Mul", [base, f"{p}_c{k}"], [f"{p}_t{k}"], name=f"{p}_t{k}"))
        terms.append(f"{p}_t{k}")
    inits.append(_const(p + "_c0", c[:, 0].reshape(cs), dtype))
    nodes.append(helper.make_node("Sum", terms + [p + "_c0"], [y], name=p + "_sum"))
    return nodes, inits, "power sum"


def _average_pool(node) -> onnx.NodeProto:
    a = attributes(node)
    keep = {k: v for k, v in a.items() if k in ("kernel_shape", "strides", "pads", "auto_pad", "ceil_mode")}
    return helper.make_node("AveragePool", [node.input[0]], [node.output[0]], name=node.name + "_avg",
                            count_include_pad=0, **keep)


def adapted_model(g: OnnxGraph, module, record: dict) -> onnx.ModelProto:
    model = onnx.ModelProto()
    model.CopyFrom(g.model)
    graph = model.graph
    dtype = onnx.helper.tensor_dtype_to_np_dtype(
        next(vi for vi in graph.input if vi.name == g.input_name).type.tensor_type.elem_type)
    trained = module.trained_values()
    for init in graph.initializer:
        if init.name in trained:
            old = numpy_helper.to_array(init)
            init.CopyFrom(_const(init.name, trained[init.name].reshape(old.shape), old.dtype))
    forms = {}
    new_nodes, new_inits = [], []
    for node in graph.node:
        if node.name in module.acts:
            nodes, inits, forms[node.name] = polynomial_nodes(node, module.acts[node.name],
                                                              g.shapes[node.input[0]], dtype)
            new_nodes += nodes
            new_inits += inits
        elif node.op_type == "MaxPool" and node in g.compute:
            new_nodes.append(_average_pool(node))
        else:
            new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    graph.initializer.extend(new_inits)
    used = {i for n in graph.node for i in n.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    for a in record.get("activations", []):
        a["form"] = forms.get(a["node"], "")
    props = [p for p in model.metadata_props if p.key != META_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    model.metadata_props.add(key=META_KEY, value=json.dumps(record, sort_keys=True))
    onnx.checker.check_model(model)
    return model
