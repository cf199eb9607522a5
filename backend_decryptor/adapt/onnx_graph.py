"""Read the owner's ONNX model for adapt: check it, fold what is constant, learn every tensor's static
shape, and say which nodes get replaced (activations -> polynomials, MaxPool -> AveragePool).

The reading rules (file checks, opset upgrade, the single input's shape, topological order) are
protect's own (protected_nn.frontend.loader), so adapt accepts exactly the models protect reads;
the op table it checks against is protect's OP_TABLE plus what adapt replaces.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx.numpy_helper

from backend_decryptor.adapt import AdaptError
from protected_nn.errors import ProtectedNNError
from protected_nn.frontend import OP_TABLE
from protected_nn.frontend import calibration as cal
from protected_nn.frontend import loader

# Non-polynomial activations: each becomes a trainable polynomial (Clip is not in protect's table
# at all; the others protect would only fit, which fails on wide ranges).
ACTIVATIONS = ("Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "Softplus")
# MaxPool becomes an AveragePool with the same window (protect's own stand-in, then trained).
POOLS = ("MaxPool",)
_DEFAULT_DOMAINS = ("", "ai.onnx")


def adaptable_ops() -> set[str]:
    return set(OP_TABLE) | set(ACTIVATIONS) | set(POOLS)


@dataclass
class OnnxGraph:
    model: onnx.ModelProto                 # the checked (opset-upgraded) model
    input_name: str
    input_shape: tuple[int, ...]           # one input, batch 1: what onnxruntime takes
    dtype: type
    output_name: str
    nodes: list[onnx.NodeProto]            # topological order, every node named
    constants: dict[str, np.ndarray]       # initializers + folded constant nodes
    initializers: set[str]
    shapes: dict[str, tuple[int, ...]]     # every tensor's static shape (batch 1)
    compute: list[onnx.NodeProto] = field(default_factory=list)   # nodes on the data flow

    @property
    def opset(self) -> int:
        return loader._opset(self.model)

    def activations(self) -> list[onnx.NodeProto]:
        return [n for n in self.compute if n.op_type in ACTIVATIONS]

    def pools(self) -> list[onnx.NodeProto]:
        return [n for n in self.compute if n.op_type in POOLS]


def load_graph(path_or_model) -> OnnxGraph:
    try:
        model = loader._upgrade(loader._read(path_or_model))
    except ProtectedNNError as exc:
        raise AdaptError(str(exc)) from None
    graph = model.graph
    for i, node in enumerate(graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    constants = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    inputs = [vi for vi in graph.input if vi.name not in constants]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise AdaptError(f"adapt needs a model with exactly one input and one output, this one has "
                         f"{len(inputs)} input(s) and {len(graph.output)} output(s)")
    try:
        in_shape = loader._input_shape(inputs[0])
        dtype = cal.input_dtype(inputs[0].type.tensor_type.elem_type)
        nodes = loader._toposort(graph, set(constants) | {inputs[0].name})
    except ProtectedNNError as exc:
        raise AdaptError(str(exc)) from None
    if in_shape[0] != 1:
        raise AdaptError(f"the model input {in_shape} must have a batch dimension of 1 first")
    g = OnnxGraph(model=model, input_name=inputs[0].name, input_shape=in_shape, dtype=dtype,
                  output_name=graph.output[0].name, nodes=nodes, constants=constants,
                  initializers=set(constants), shapes={})
    _check_ops(g)
    g.shapes = _static_shapes(g)
    _fold(g)
    return g


def _check_ops(g: OnnxGraph) -> None:
    """Every op on the data flow must be one adapt can convert: all offenders named at once."""
    const = set(g.constants)
    bad = []
    for node in g.nodes:
        if all(i in const for i in node.input if i) or node.op_type == "Shape":
            const.update(node.output)
            continue
        if node.domain not in _DEFAULT_DOMAINS or node.op_type not in adaptable_ops():
            op = node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}::{node.op_type}"
            bad.append(f"{op} (node '{node.name}')")
    if bad:
        raise AdaptError(f"cannot adapt op(s): {', '.join(bad)}; adapt converts "
                         f"{', '.join(sorted(adaptable_ops()))}")


def _static_shapes(g: OnnxGraph) -> dict[str, tuple[int, ...]]:
    """Shapes do not depend on values: one run of onnxruntime on zeros gives all of them."""
    zeros = np.zeros((1,) + g.input_shape)
    try:
        _, shapes = cal.observe(g.model, g.input_name, zeros, g.dtype)
    except ProtectedNNError as exc:
        raise AdaptError(str(exc)) from None
    shapes[g.input_name] = tuple(g.input_shape)
    return shapes


def _fold(g: OnnxGraph) -> None:
    """Constant nodes (Constant, shape arithmetic, Shape of a static tensor) become values; the
    rest is the data flow the PyTorch module computes."""
    from onnx.reference import ReferenceEvaluator
    for node in g.nodes:
        if node.op_type == "Shape" and node.input[0] not in g.constants:
            shape = np.array(g.shapes[node.input[0]], dtype=np.int64)
            start = _attr(node, "start", 0)
            end = _attr(node, "end", len(shape))
            g.constants[node.output[0]] = shape[start:end]
        elif all(i in g.constants for i in node.input if i):
            try:
                outs = ReferenceEvaluator(node, opsets={"": g.opset}).run(
                    None, {n: g.constants[n] for n in node.input if n})
            except Exception as exc:
                raise AdaptError(f"cannot fold constant node {node.op_type} '{node.name}': {exc}") from None
            for name, value in zip(node.output, outs):
                if name:
                    g.constants[name] = np.asarray(value)
        else:
            g.compute.append(node)
    if g.output_name in g.constants or not g.compute:
        raise AdaptError(f"the model output '{g.output_name}' does not depend on the input")


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def attributes(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
