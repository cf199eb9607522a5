"""Calibration: run onnxruntime on representative inputs with every intermediate tensor exposed
as a graph output, and record each tensor's value range (to fit activation polynomials) and
shape (to cross-check the lowering against the real runtime)."""
from __future__ import annotations

import numpy as np
import onnx

from protected_nn.errors import InputError, ModelError

_ORT_DTYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64,
               onnx.TensorProto.FLOAT16: np.float16}


def input_dtype(elem_type: int) -> type:
    if elem_type not in _ORT_DTYPES:
        raise ModelError(f"model input type {onnx.TensorProto.DataType.Name(elem_type)} is not "
                         f"supported (float, double or float16)")
    return _ORT_DTYPES[elem_type]


def calibration_inputs(calibration: np.ndarray | None, input_shape: tuple[int, ...], *,
                       input_range: tuple[float, float], samples: int, seed: int) -> np.ndarray:
    """Stack of calibration inputs, shaped (N, *input_shape). A given array may be one input
    (input_shape), a stack (N, *input_shape), or a batch (N, *input_shape[1:]) when batch is 1."""
    if calibration is None:
        lo, hi = (float(v) for v in input_range)
        if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
            raise InputError(f"input_range {input_range} must be finite with low <= high")
        if samples < 1:
            raise InputError(f"calibration_samples must be >= 1 (got {samples})")
        rng = np.random.default_rng(seed)
        return rng.uniform(lo, hi, size=(samples, *input_shape))
    cal = np.asarray(calibration)
    if not np.issubdtype(cal.dtype, np.number) or np.issubdtype(cal.dtype, np.complexfloating):
        raise InputError(f"calibration data must be real numbers (got dtype {cal.dtype})")
    if cal.shape == tuple(input_shape):
        cal = cal[None]
    elif cal.shape[1:] == tuple(input_shape):
        pass
    elif input_shape and input_shape[0] == 1 and cal.shape[1:] == tuple(input_shape[1:]):
        cal = cal[:, None]
    else:
        raise InputError(f"calibration data of shape {cal.shape} does not match the model input "
                         f"{tuple(input_shape)} (give one input, or N stacked: (N, *input shape))")
    if cal.shape[0] == 0 or not np.all(np.isfinite(cal)):
        raise InputError("calibration data must hold at least one input and only finite values")
    return cal.astype(np.float64)


def _with_all_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    typed = {vi.name: vi for vi in exposed.graph.value_info}
    present = {o.name for o in exposed.graph.output}
    for node in exposed.graph.node:
        for name in node.output:
            if name and name not in present:
                # an untyped output is accepted by onnxruntime; a typed one is used when known
                vi = onnx.ValueInfoProto()
                if name in typed:
                    vi.CopyFrom(typed[name])
                else:
                    vi.name = name
                exposed.graph.output.append(vi)
                present.add(name)
    return exposed


def observe(model: onnx.ModelProto, input_name: str, inputs: np.ndarray, dtype: type
            ) -> tuple[dict[str, tuple[float, float]], dict[str, tuple[int, ...]]]:
    """(min, max) over all inputs and the shape of every tensor the model computes."""
    import onnxruntime as ort   # heavy import, only needed here

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(_with_all_outputs(model).SerializeToString(), opts,
                                       providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelError(f"onnxruntime cannot load the model: {exc}") from exc
    names = [o.name for o in session.get_outputs()]
    ranges: dict[str, tuple[float, float]] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for sample in inputs:
        try:
            values = session.run(names, {input_name: sample.astype(dtype)})
        except Exception as exc:
            raise ModelError(f"onnxruntime failed on a calibration input: {exc}") from exc
        for name, v in zip(names, values):
            v = np.asarray(v)
            shapes[name] = tuple(v.shape)
            if v.size and np.issubdtype(v.dtype, np.floating):
                lo, hi = float(np.min(v)), float(np.max(v))
                if name in ranges:
                    lo, hi = min(lo, ranges[name][0]), max(hi, ranges[name][1])
                ranges[name] = (lo, hi)
    ranges[input_name] = (float(inputs.min()), float(inputs.max()))
    shapes[input_name] = tuple(inputs.shape[1:])
    return ranges, shapes
