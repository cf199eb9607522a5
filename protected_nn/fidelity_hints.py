"""What `protect` says when a model does not fit or misses its tolerance: which layer causes
it and which remedies exist, instead of a generic "raise the degree".

The layer is found in plaintext, where the owner has everything: onnxruntime computes every
intermediate tensor of the check inputs. Only layers that approximate (a fitted polynomial, a
mean standing for a max) can add error - the others are exact and only carry it on - so each of
those is run on onnxruntime's own input tensor and scored by how far its output lands from
onnxruntime's, relative to that tensor's range."""
from __future__ import annotations

import numpy as np

from protected_nn import ir

ADAPT_COMMAND = "backend-decryptor adapt MODEL.onnx --data X.npy --out ADAPTED.onnx"
_MAX_OPS = ("MaxPool", "GlobalMaxPool")


def _ort_tensors(model, inputs: np.ndarray) -> list[dict[str, np.ndarray]]:
    import onnxruntime as ort

    from protected_nn.frontend.calibration import _with_all_outputs
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(_with_all_outputs(model).SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    feed = sess.get_inputs()[0].name
    return [dict(zip(names, sess.run(names, {feed: x.astype(np.float32)}))) for x in inputs]


def _run_layer(layer: ir.Layer, args: list[np.ndarray]) -> np.ndarray:
    if len(args) == 1:
        one = ir.Graph(layers=[ir.Input(name=layer.inputs[0], inputs=[], shape=(args[0].size,)), layer],
                       output=layer.name, output_shape=(layer.size,))
        return ir.evaluate_plain(one, args[0]).reshape(-1)
    return np.sum(args, axis=0)      # ir.Add, the only layer with several inputs


def _is_approximation(layer: ir.Layer, ops: dict[str, str]) -> bool:
    return (isinstance(layer, ir.Poly) and layer.fit_max_error > 0) or \
        any(ops.get(s) in _MAX_OPS for s in layer.sources)


def layer_errors(model, graph: ir.Graph, inputs: np.ndarray) -> list[tuple[float, ir.Layer]]:
    """(error relative to its tensor's range, layer) for every approximating IR layer, worst
    first; each runs on onnxruntime's tensors where onnxruntime has them (else the IR's)."""
    ops = _op_types(model)
    worst: dict[str, float] = {}
    for x, ref in zip(inputs, _ort_tensors(model, inputs)):
        ours: dict[str, np.ndarray] = {}
        for layer in graph.layers:
            if isinstance(layer, ir.Input):
                ours[layer.name] = np.asarray(x, dtype=np.float64).reshape(-1)
                continue
            exact = [np.asarray(ref[n], np.float64).reshape(-1) if n in ref and np.size(ref[n]) == ours[n].size
                     else ours[n] for n in layer.inputs]
            ours[layer.name] = _run_layer(layer, [ours[n] for n in layer.inputs])
            r = ref.get(layer.name)
            if not _is_approximation(layer, ops) or r is None or np.size(r) != layer.size:
                continue
            r = np.asarray(r, dtype=np.float64).reshape(-1)
            span = max(float(np.ptp(r)), 1e-6, float(np.max(np.abs(r))) * 1e-3)
            err = float(np.max(np.abs(_run_layer(layer, exact) - r))) / span
            worst[layer.name] = max(worst.get(layer.name, 0.0), err)
    by_name = graph.by_name()
    return sorted(((e, by_name[n]) for n, e in worst.items()), key=lambda t: -t[0])


def _op_types(model) -> dict[str, str]:
    """ONNX node name -> op type, with the names the frontend gives unnamed nodes."""
    return {(n.name or f"{n.op_type}_{i}"): n.op_type for i, n in enumerate(model.graph.node)}


def _describe(layer: ir.Layer, ops: dict[str, str]) -> tuple[str, str]:
    """(kind, text): kind is 'maxpool', 'poly' or 'exact'."""
    src = ", ".join(f"{ops.get(s, '?')} node '{s}'" for s in layer.sources[:3])
    if isinstance(layer, ir.Poly) and layer.fit_max_error > 0:
        lo, hi = layer.fit_range
        return "poly", (f"layer '{layer.name}' ({src}): {layer.op} replaced by a degree-"
                        f"{len(layer.coeffs) - 1} polynomial fitted on [{lo:.3g}, {hi:.3g}] "
                        f"(fit error {layer.fit_max_error:.2e})")
    if any(ops.get(s) in _MAX_OPS for s in layer.sources):
        return "maxpool", (f"layer '{layer.name}' ({src}): MaxPool is evaluated as the mean of "
                           f"each window (mean-for-max), not the maximum")
    return "exact", f"layer '{layer.name}' ({src})"


def fidelity_hint(model, graph: ir.Graph, inputs: np.ndarray, opts) -> str:
    """The cause (the layer adding the largest error) and the remedies that exist for it."""
    ops = _op_types(model)
    ranked = layer_errors(model, graph, inputs)
    lines = []
    if ranked and ranked[0][0] > opts.tolerance / 10:
        err, layer = ranked[0]
        kind, text = _describe(layer, ops)
        lines.append(f"largest error: {text}; alone it is off by {err:.2e} of its output's range "
                     f"on the check inputs.")
    else:
        kind = "ckks"
        lines.append("the plaintext approximation matches onnxruntime: the error comes from CKKS "
                     "precision, not from one layer.")
    if kind == "maxpool":
        lines.append("remedies: retrain with AveragePool, or run `" + ADAPT_COMMAND + "` "
                     "(MaxPool becomes average pooling, fine-tuned on your data X.npy).")
    elif kind == "poly":
        lines.append("remedies: run `" + ADAPT_COMMAND + "` (learns low-degree activations "
                     "from your data X.npy; the usual fix for Relu networks); or raise "
                     f"--poly-degree (now {opts.poly_degree}; each doubling costs about one more "
                     "level per activation, and the model fails when it needs more levels than "
                     "the largest ring has); or give --calibration inputs like the real ones.")
    else:
        lines.append("remedies: give --calibration inputs like the real ones (the result's "
                     "precision is sized to the output range they produce).")
    lines.append(f"or accept the error: --tolerance T (now {opts.tolerance:g}), or --force to "
                 f"store anyway.")
    return "\n".join(lines)


def plan_error_hint(message: str, graph: ir.Graph, poly_degree: int) -> str:
    """Remedies appended to a compiler error, when they exist."""
    if "level" not in message:
        return ""
    fitted = [l for l in graph.layers if isinstance(l, ir.Poly) and l.fit_max_error > 0]
    squares = sum(isinstance(l, ir.Square) for l in graph.layers)
    text = (f"; each activation costs levels: {len(fitted)} fitted polynomial(s) of degree "
            f"{poly_degree} (about {int(np.ceil(np.log2(poly_degree + 1)))} levels each) and "
            f"{squares} x*x (1 level each). Remedies: a lower --poly-degree")
    if fitted:
        text += f", or `{ADAPT_COMMAND}` (learns degree-2 activations: 1-2 levels each)"
    return text + ", or fewer activation layers."
