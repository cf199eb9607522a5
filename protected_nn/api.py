"""The facade both services use. Owner side: `protect`, `OwnerModel`. Gateway side: `EdgeModel`.

    prot = protect("model.onnx", calibration=x_cal)          # keys + compile + encrypt + self-check
    edge = EdgeModel(prot.artifacts)                          # no secret key anywhere in it
    payload = edge.infer(x)                                   # bytes: encrypted result
    y = OwnerModel(prot.artifacts, prot.secret_key).decrypt(payload)   # == onnxruntime(x) +- tol
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from protected_nn.artifacts import ModelArtifacts, parse_model_card
from protected_nn.ckks.context import Ckks
from protected_nn.errors import ModelError, PlanError, ProtectedNNError
from protected_nn.runtime import params_blob
from protected_nn.runtime.evaluator import Evaluator
from protected_nn.runtime.plan_sections import parse_plan, read_plan
from protected_nn.runtime.weight_loader import load_weights

# Owner-side modules (key generation, decryption, compiler) are imported inside protect() and
# OwnerModel only, so a gateway process never even loads them.


@dataclass
class ProtectOptions:
    poly_degree: int = 4               # degree of polynomials replacing Relu/Sigmoid/... activations
    tolerance: float = 1e-2            # max |enc - onnxruntime| / output range accepted by the self-check
    force: bool = False                # store even above tolerance
    calibration_samples: int = 8       # drawn in the input range when no calibration file is given
    input_range: tuple[float, float] = (0.0, 1.0)
    check_samples: int = 2             # calibration inputs run through the encrypted path
    model_card: dict | None = None     # overrides/extends the card read from ONNX metadata (model_card.py)
    calibration_source: str | None = None   # where a given calibration array came from (a file)
    seeded: bool = True                # keys and weight ciphertexts stored seeded (half the bundle)
    trim_keys: bool = True             # evaluation keys stored only as wide as the plan uses them
    progress: bool = True              # one line per stage on stderr (load, calibrate, plan, ...)


@dataclass
class Protected:
    artifacts: ModelArtifacts
    secret_key: bytes
    report: dict = field(default_factory=dict)
    report_text: str = ""


def _load_model(onnx_path):
    import onnx
    try:
        return onnx.load(str(onnx_path)) if isinstance(onnx_path, (str, Path)) else onnx_path
    except Exception as exc:
        raise ModelError(f"cannot read ONNX model {onnx_path}: {exc}") from None


def calibration_beside(onnx_path) -> Path | None:
    """MODEL.calibration.npy next to MODEL.onnx (representative inputs shipped with the model),
    if there is one: the default calibration set of `protect`."""
    path = Path(onnx_path).with_suffix(".calibration.npy")
    return path if path.is_file() else None


def protect(onnx_path, *, calibration: np.ndarray | None = None,
            options: ProtectOptions | None = None) -> Protected:
    """Owner side: compile, generate keys for exactly the plan's rotations, encrypt every trained
    parameter, run the fidelity self-check against onnxruntime."""
    from protected_nn.ckks.context import SecretCkks
    from protected_nn.compiler.planner import compile_graph
    from protected_nn.frontend import load_onnx
    from protected_nn.runtime.owner import encrypt_weights, trim_key_rows
    from protected_nn.model_card import card_from_onnx
    from protected_nn.runtime.report import build_report
    from protected_nn.runtime.selfcheck import fidelity_check

    opts = options or ProtectOptions()
    stage = _Stages(opts.progress)
    model = _load_model(onnx_path)
    if calibration is None and isinstance(onnx_path, (str, Path)):
        beside = calibration_beside(onnx_path)
        if beside is not None:
            calibration = np.load(beside, allow_pickle=False)
            opts = dataclasses.replace(opts, calibration_source=str(beside))
    t0 = time.perf_counter()
    graph = load_onnx(model, calibration=calibration, poly_degree=opts.poly_degree,
                      input_range=opts.input_range, calibration_samples=opts.calibration_samples)
    stage.done("load", f"{len(graph.layers)} layers")
    input_shape = _onnx_input_shape(model, graph)
    cal = _calibration_inputs(input_shape, calibration, opts)
    calibrated = calibration_record(cal, calibration, opts)
    # Before the slow part: a card that does not fit the schema is refused with the field named.
    # The calibrated range is in the bundle and the store: the gateway warns on inputs outside
    # it, `decrypt` names it when a result does not decrypt (an input far outside overflows it).
    card = card_from_onnx(None, {p.key: p.value for p in model.metadata_props}, graph.input.shape,
                          graph.output_shape, opts.model_card, calibrated["input_range"])
    ref_outputs = _onnxruntime(model, cal)
    stage.done("calibrate", calibrated["description"])
    try:
        plan = compile_graph(graph, output_bits_for(ref_outputs))
    except PlanError as exc:
        from protected_nn.fidelity_hints import plan_error_hint
        raise PlanError(f"{exc}{plan_error_hint(str(exc), graph, opts.poly_degree)}") from None
    plan.doc["input"]["shape"] = list(input_shape)     # exactly what onnxruntime takes
    doc = parse_plan(plan.doc)         # the gateway's reading: a planner bug fails here, not there
    t_compile = time.perf_counter() - t0
    params = doc.ckks.params
    stage.done("plan", f"N={params.n}, {len(doc.weights)} weight ciphertexts, "
                       f"{len(doc.rotation_steps)} rotation steps")
    sk = SecretCkks.generate(params, set(doc.rotation_steps), evaluation_keys=not opts.seeded)
    t1 = time.perf_counter()
    weight_blobs = encrypt_weights(sk, plan.weights, seeded=opts.seeded)
    t_encrypt = time.perf_counter() - t1
    pub = sk.public_bytes(seeded_keys=opts.seeded)
    artifacts = ModelArtifacts(plan=json.dumps(plan.doc).encode(), context=pub["context"],
                               public_key=pub["public_key"], relin_key=pub["relin_key"],
                               rotation_keys=pub["rotation_keys"],
                               params=params_blob.pack(weight_blobs),
                               model_card=card.to_json())
    if opts.trim_keys:    # keys only as wide as the plan uses them; the self-check runs on these
        artifacts = trim_key_rows(artifacts, doc)
    stage.done("encrypt weights", f"keys ({(len(artifacts.rotation_keys) + len(artifacts.relin_key)) / 1e6:.0f} MB) "
                                  f"and {len(weight_blobs)} weight ciphertexts "
                                  f"({sum(len(b) for b in weight_blobs) / 1e6:.0f} MB)")
    secret = sk.secret_bytes()
    fidelity = fidelity_check(lambda: EdgeModel(artifacts), lambda: OwnerModel(artifacts, secret),
                              cal[:max(1, opts.check_samples)],
                              ref_outputs[:max(1, opts.check_samples)])
    stage.done("self-check", f"max error {fidelity['max_rel_error']:.1e} of the output range")
    report = build_report(graph, plan, doc, artifacts, fidelity, timings={
        "compile_s": t_compile, "encrypt_params_s": t_encrypt}, tolerance=opts.tolerance)
    report["data"]["calibration"] = calibrated
    prot = Protected(artifacts=artifacts, secret_key=secret, report=report["data"],
                     report_text=f"{report['text']}\nCalibration: {calibrated['description']}; "
                                 f"inputs outside [{calibrated['input_range'][0]:g}, "
                                 f"{calibrated['input_range'][1]:g}] are out of the calibrated range")
    if fidelity["max_rel_error"] > opts.tolerance and not opts.force:
        from protected_nn.fidelity_hints import fidelity_hint
        hint = fidelity_hint(model, graph, cal[:max(1, opts.check_samples)], opts)
        raise ProtectedNNError(
            f"encrypted outputs differ from onnxruntime by {fidelity['max_rel_error']:.2e} of the "
            f"output range, above the tolerance {opts.tolerance:g}.\n{hint}\n\n{prot.report_text}")
    return prot


class _Stages:
    """`protect` takes minutes on a large model: one line per finished stage on stderr, with the
    stage's and the total elapsed time, so an owner sees where it is and what it costs."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.start = self.last = time.perf_counter()

    def done(self, name: str, detail: str = "") -> None:
        now = time.perf_counter()
        if self.enabled:
            print(f"protect: {name:<15} {now - self.last:7.1f} s  (total {now - self.start:6.1f} s)"
                  f"{'  ' + detail if detail else ''}", file=sys.stderr, flush=True)
        self.last = now


def calibration_record(cal: np.ndarray, given, opts) -> dict:
    """What the model was calibrated on, for the report, the plan and the messages that follow
    from it: the range of the calibration inputs and where they came from."""
    if given is None:
        lo, hi = (float(v) for v in opts.input_range)
        what = f"{len(cal)} uniform samples in [{lo:g}, {hi:g}]"
    else:
        lo, hi = float(np.min(cal)), float(np.max(cal))
        what = f"{len(cal)} input(s) from {opts.calibration_source or 'the given array'} " \
               f"spanning [{lo:g}, {hi:g}]"
    return {"input_range": [lo, hi], "description": what, "samples": int(len(cal))}


def output_bits_for(ref_outputs: np.ndarray) -> int:
    """Bits of the result above its scale: 4x headroom over the calibration outputs."""
    max_out = float(np.max(np.abs(ref_outputs))) if ref_outputs.size else 1.0
    return max(4, int(math.ceil(math.log2(max_out * 4 + 1))) + 1)


def estimate_plan(onnx_path, *, calibration: np.ndarray | None = None,
                  options: ProtectOptions | None = None) -> dict:
    """The plan `protect` would make - depth, CKKS ring, per-layer costs, estimated latency -
    without generating keys or encrypting anything (owner side)."""
    from protected_nn.compiler.planner import compile_graph
    from protected_nn.frontend import load_onnx
    from protected_nn.runtime.report import estimate_latency

    opts = options or ProtectOptions()
    model = _load_model(onnx_path)
    graph = load_onnx(model, calibration=calibration, poly_degree=opts.poly_degree,
                      input_range=opts.input_range, calibration_samples=opts.calibration_samples)
    cal = _calibration_inputs(_onnx_input_shape(model, graph), calibration, opts)
    plan = compile_graph(graph, output_bits_for(_onnxruntime(model, cal)))
    doc = parse_plan(plan.doc)
    params = doc.ckks.params
    rows, est_ms = estimate_latency(plan.layer_stats, doc)
    return {"depth": params.depth, "ring_dimension": params.n, "estimated_latency_ms": round(est_ms, 1),
            "layers": rows, "warnings": list(graph.warnings)}


def _onnx_input_shape(model, graph) -> tuple[int, ...]:
    """The input shape as onnxruntime takes it (symbolic dims are the batch of one)."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    init = {i.name for i in model.graph.initializer}
    data = [i for i in model.graph.input if i.name not in init]
    if data:
        dims = data[0].type.tensor_type.shape.dim
    shape = tuple(int(d.dim_value) if d.dim_value > 0 else 1 for d in dims)
    if int(np.prod(shape)) != graph.input.size:
        return tuple(graph.input.shape)
    return shape


def _calibration_inputs(shape, calibration, opts) -> np.ndarray:
    shape = tuple(shape)
    if calibration is not None:
        cal = np.asarray(calibration, dtype=np.float32)
        if cal.shape == shape:
            return cal[None]
        if cal.ndim == len(shape) + 1 and cal.shape[1:] == shape:
            return cal
        if cal.ndim == len(shape) and cal.shape[1:] == shape[1:]:
            return cal[:, None]
        raise ModelError(f"calibration array shape {cal.shape} does not match the input {shape}")
    rng = np.random.default_rng(0)
    lo, hi = opts.input_range
    return rng.uniform(lo, hi, size=(opts.calibration_samples,) + shape).astype(np.float32)


def _onnxruntime(model, inputs: np.ndarray) -> np.ndarray:
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.log_severity_level = 3    # errors only: its coloured optimizer warnings are not ours to show
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.stack([sess.run(None, {name: x.astype(np.float32)})[0] for x in inputs])


class EdgeModel:
    """Gateway side: loads public artifacts, encrypts inputs, evaluates, serializes results.
    It never holds a secret key: its CKKS object is built from public bytes only.

    `artifacts`: a ModelArtifacts, or any source of members by name (`member(name)`, as
    edge_agent/sealed_artifacts.py's copy of a verified bundle). It keeps none of their bytes but
    the model card's: a worker holds the keys and weights SEAL expanded, not the bundle besides."""

    def __init__(self, artifacts):
        plan = read_plan(artifacts.member("plan"))   # typed and checked before any key or weight is parsed
        self.plan = plan
        self.key_fingerprint = artifacts.key_fingerprint
        self._card = artifacts.member("model_card")
        # Keys first: their load's transient peak (SEAL inflates them) is then not on top of the weights.
        ckks = Ckks.from_public_bytes(plan.ckks.params, artifacts.member("context"),
                                      artifacts.member("public_key"), artifacts.member("relin_key"),
                                      artifacts.member("rotation_keys"), set(plan.rotation_steps))
        self._eval = Evaluator(plan, ckks, load_weights(ckks, artifacts, len(plan.weights)))
        self.input_shape = self._eval.input_shape
        self.output_shape = tuple(plan.output.shape)

    def encrypt(self, x: np.ndarray) -> list:
        return self._eval.encrypt_input(x)

    def evaluate(self, cts: list):
        return self._eval.run(cts)

    def serialize(self, ct) -> bytes:
        return self._eval.serialize(ct)

    def infer(self, x: np.ndarray) -> bytes:
        return self._eval.infer(x)

    @functools.cached_property
    def model_card(self):
        """The bundle's card (protected_nn.model_card), parsed on first use: a worker that only
        infers never imports pydantic (about 8 MB per process)."""
        return parse_model_card(self._card)


class OwnerModel:
    """Backend side: holds the secret key; decrypts payloads to the model's output tensor."""

    def __init__(self, artifacts: ModelArtifacts, secret_key: bytes):
        plan = read_plan(artifacts.plan)
        self.plan = plan
        self.key_fingerprint = artifacts.key_fingerprint
        self._card = artifacts.model_card     # only the card: the keys' bytes are not kept
        from protected_nn.ckks.context import SecretCkks
        from protected_nn.runtime.owner import Decoder

        sk = SecretCkks.from_bytes(plan.ckks.params, artifacts.context, artifacts.public_key, secret_key)
        self._decoder = Decoder(plan, sk)
        self.output_shape = tuple(plan.output.shape)

    def decrypt(self, payload: bytes) -> np.ndarray:
        return self._decoder.decode(payload)

    @functools.cached_property
    def model_card(self):
        """The stored card (protected_nn.model_card), parsed on first use, as EdgeModel's."""
        return parse_model_card(self._card)
