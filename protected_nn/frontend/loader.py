"""load_onnx: an ONNX model -> the IR graph (topological, linear chains fused).

Steps: read + check the model, upgrade old opsets, infer shapes, find the single input/output,
run calibration through onnxruntime, then lower node by node through the op table. Nodes whose
inputs are all constants (Constant, shape arithmetic...) are folded with onnx's reference
evaluator: they touch no encrypted data, so they need no entry in the op table.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import scipy.sparse as sp

from protected_nn import ir
from protected_nn.errors import ModelError, ProtectedNNError
from protected_nn.frontend import calibration as cal
from protected_nn.frontend.context import LoweringContext, ir_shape
from protected_nn.frontend.registry import handler_for

MIN_OPSET = 13


def _read(path_or_model) -> onnx.ModelProto:
    if isinstance(path_or_model, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(path_or_model)
    elif isinstance(path_or_model, (bytes, bytearray)):
        try:
            model = onnx.load_model_from_string(bytes(path_or_model))
        except Exception as exc:
            raise ModelError(f"not a valid ONNX model: {exc}") from exc
    elif isinstance(path_or_model, (str, os.PathLike)):
        path = Path(path_or_model)
        if not path.is_file():
            raise ModelError(f"ONNX model file not found: {path}")
        try:
            model = onnx.load(str(path))
        except Exception as exc:
            raise ModelError(f"{path}: not a valid ONNX model: {exc}") from exc
    else:
        raise ModelError(f"expected an ONNX path, bytes or ModelProto, got {type(path_or_model).__name__}")
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ModelError(f"invalid ONNX model: {exc}") from exc
    return model


def _opset(model: onnx.ModelProto) -> int | None:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return None


def _upgrade(model: onnx.ModelProto) -> onnx.ModelProto:
    version = _opset(model)
    if version is None:
        raise ModelError("the model imports no default-domain (ai.onnx) opset")
    if version >= MIN_OPSET:
        return model
    try:
        from onnx import version_converter
        model = version_converter.convert_version(model, MIN_OPSET)
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ModelError(f"the model uses opset {version}; opset {MIN_OPSET}+ is required and the "
                         f"automatic upgrade failed: {exc}") from exc
    return model


def _input_shape(vi: onnx.ValueInfoProto) -> tuple[int, ...]:
    """The input's static shape; a symbolic leading (batch) dimension is 1: one frame per
    inference. A fixed leading dimension other than 1 is kept (it is part of one input)."""
    if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
        raise ModelError(f"model input '{vi.name}' has no tensor shape")
    dims = []
    for i, d in enumerate(vi.type.tensor_type.shape.dim):
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(d.dim_value)
        elif d.HasField("dim_value"):
            raise ModelError(f"model input '{vi.name}': dimension {i} has size 0 (empty tensor)")
        elif i == 0:
            dims.append(1)
        else:
            raise ModelError(f"model input '{vi.name}': dimension {i} is symbolic "
                             f"({d.dim_param or '?'}); only the batch dimension may be")
    return tuple(dims)


def _toposort(graph: onnx.GraphProto, known: set[str]) -> list[onnx.NodeProto]:
    pending, ordered, available = list(graph.node), [], set(known) | {""}
    while pending:
        ready = [all(i in available for i in n.input) for n in pending]
        if not any(ready):
            missing = sorted({i for n in pending for i in n.input if i not in available})
            raise ModelError(f"undefined tensors or a cycle in the graph: {missing[:10]}")
        for n, ok in zip(pending, ready):
            if ok:
                ordered.append(n)
                available.update(n.output)
        pending = [n for n, ok in zip(pending, ready) if not ok]
    return ordered


def _is_folded(node: onnx.NodeProto, is_const) -> bool:
    """Nodes computing only on constants are folded. (Shape of an encrypted tensor also yields a
    constant, through its op-table entry.)"""
    return all(is_const(i) for i in node.input if i)


def _check_ops_supported(nodes: list[onnx.NodeProto], constants: set[str]) -> None:
    """Fail on the first op outside the table before anything runs the model."""
    const = set(constants)
    for node in nodes:
        if _is_folded(node, const.__contains__) or node.op_type == "Shape":
            const.update(node.output)
        else:
            handler_for(node)


def _fold(node: onnx.NodeProto, ctx: LoweringContext, opset: int) -> None:
    from onnx.reference import ReferenceEvaluator
    try:
        evaluator = ReferenceEvaluator(node, opsets={"": opset})   # the model's op versions
        feeds = {n: ctx.constants[n] for n in node.input if n}
        outputs = evaluator.run(None, feeds)
    except Exception as exc:
        raise ModelError(f"cannot fold constant node {node.op_type} '{node.name}': {exc}") from exc
    for name, value in zip(node.output, outputs):
        if name:
            ctx.set_const(name, np.asarray(value))


def _prune(layers: list[ir.Layer], output: str) -> list[ir.Layer]:
    """Keep the input and the layers the output depends on (unused branches vanish)."""
    by_name = {layer.name: layer for layer in layers}
    needed, stack = set(), [output]
    while stack:
        name = stack.pop()
        if name not in needed:
            needed.add(name)
            stack.extend(by_name[name].inputs)
    return [l for l in layers if l.name in needed or isinstance(l, ir.Input)]


def load_onnx(path_or_model, *, calibration: np.ndarray | None = None, poly_degree: int = 4,
              input_range=(0.0, 1.0), calibration_samples: int = 8, seed: int = 0) -> ir.Graph:
    """Lower an ONNX CNN (opset 13+, one input with batch 1, one output) to the IR."""
    if not isinstance(poly_degree, (int, np.integer)) or isinstance(poly_degree, bool) \
            or not 1 <= poly_degree <= 63:
        raise ProtectedNNError(f"poly_degree must be an integer in 1..63 (got {poly_degree!r})")
    model = _upgrade(_read(path_or_model))
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception as exc:
        raise ModelError(f"ONNX shape inference failed: {exc}") from exc
    graph = model.graph
    nodes = list(graph.node)
    for i, node in enumerate(nodes):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    constants = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    inputs = [vi for vi in graph.input if vi.name not in constants]
    if len(inputs) != 1:
        raise ModelError(f"the model must have exactly one input, it has {len(inputs)}: "
                         f"{[vi.name for vi in inputs]}")
    if len(graph.output) != 1:
        raise ModelError(f"the model must have exactly one output, it has {len(graph.output)}: "
                         f"{[o.name for o in graph.output]}")
    in_vi, out_name = inputs[0], graph.output[0].name
    in_shape = _input_shape(in_vi)
    dtype = cal.input_dtype(in_vi.type.tensor_type.elem_type)
    samples = cal.calibration_inputs(calibration, in_shape, input_range=input_range,
                                     samples=calibration_samples, seed=seed)
    ordered = _toposort(graph, set(constants) | {in_vi.name})
    _check_ops_supported(ordered, set(constants))
    ctx = LoweringContext(constants=constants, poly_degree=int(poly_degree),
                          calibrate=lambda: cal.observe(model, in_vi.name, samples, dtype))
    ctx.fresh_name(in_vi.name)
    ctx.emit(ir.Input(name=in_vi.name, inputs=[], shape=ir_shape(in_shape)), in_vi.name,
             in_shape, None)
    for node in ordered:
        if _is_folded(node, ctx.is_const):
            _fold(node, ctx, _opset(model))
        else:
            handler_for(node)(node, ctx)
    ctx.verify_shapes()
    if not ctx.is_encrypted(out_name):
        raise ModelError(f"the model output '{out_name}' does not depend on the input")
    out = ctx.tensors[out_name]
    layers = ctx.layers
    if out.layer == in_vi.name:   # the model is the identity: keep one computing layer
        size = out.size
        layers.append(ir.Linear(name=ctx.fresh_name(out_name), inputs=[in_vi.name],
                                shape=ir_shape(out.shape), sources=[n.name for n in nodes],
                                weights=[sp.identity(size, format="csr")], bias=np.zeros(size)))
        out = type(out)(layers[-1].name, out.shape)
    result = ir.Graph(layers=_prune(layers, out.layer), output=out.layer, output_shape=out.shape,
                      input_name=in_vi.name, warnings=list(ctx.warnings),
                      metadata={p.key: p.value for p in model.metadata_props})
    return ir.fuse_linear(result)
