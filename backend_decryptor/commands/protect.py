"""`backend-decryptor protect MODEL.onnx --model-id ID`: keys + compile + encrypt + self-check + store."""
from __future__ import annotations

import hashlib
import sqlite3
import sys
from pathlib import Path

from backend_decryptor.commands.common import (CommandError, add_store_argument, load_npy,
                                               open_store, remove_empty_store, store_failure,
                                               store_path)
from backend_decryptor.store import validate_model_id


def add_parser(sub) -> None:
    defaults = _option_defaults()
    p = sub.add_parser("protect", help="encrypt an ONNX model under a new key and store it",
                       description="Generate a CKKS key pair, compile the ONNX model, encrypt every "
                                   "trained parameter, check fidelity against onnxruntime, print the "
                                   "plan report and store the result (a new key version if the id exists).")
    p.add_argument("model", metavar="MODEL.onnx", help="trained model (ONNX, opset 13+)")
    p.add_argument("--model-id", required=True, metavar="ID", help="store id: 1..64 chars of [A-Za-z0-9._-]")
    add_store_argument(p)
    p.add_argument("--calibration", metavar="X.npy",
                   help="calibration inputs, shape (N, *input shape) or the input shape; "
                        "default: MODEL.calibration.npy beside the model if present, else samples "
                        "drawn uniformly in --input-range")
    p.add_argument("--input-range", metavar="LO,HI", type=_input_range,
                   help=f"calibrate on {defaults.calibration_samples} inputs drawn uniformly in [LO, HI] "
                        f"(default {defaults.input_range[0]:g},{defaults.input_range[1]:g}) instead of a "
                        "calibration file; inputs outside the calibrated range give wrong results")
    p.add_argument("--poly-degree", type=int, metavar="K",
                   help=f"degree of the polynomials replacing activations (Relu, Sigmoid, ...), fitted "
                        f"over the calibrated range (default {defaults.poly_degree}); a higher degree "
                        f"fits better and costs more levels (the plan report shows them)")
    p.add_argument("--tolerance", type=float, metavar="T",
                   help=f"max |encrypted - onnxruntime| the self-check accepts, as a fraction of the "
                        f"output range on the calibration inputs (default {defaults.tolerance:g})")
    p.add_argument("--force", action="store_true", help="store even if the self-check exceeds the tolerance")
    p.add_argument("--card", metavar="CARD.yaml",
                   help="model card (what the outputs mean); default: MODEL.card.yaml or MODEL.yaml "
                        "beside the model if present, else the card in the ONNX metadata")
    p.set_defaults(func=run)


def _option_defaults():
    """The library's defaults, shown in --help (one place for them: ProtectOptions)."""
    from protected_nn.api import ProtectOptions
    return ProtectOptions()


def _input_range(text: str) -> tuple[float, float]:
    import argparse
    import math
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LO,HI (two numbers, e.g. 0,255)") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise argparse.ArgumentTypeError(f"{text!r}: expected finite LO < HI")
    return lo, hi


def _options(args):
    from protected_nn.api import ProtectOptions
    options = ProtectOptions()
    if args.input_range is not None:
        options.input_range = args.input_range
    if args.poly_degree is not None:
        if args.poly_degree < 1:
            raise CommandError(f"--poly-degree must be >= 1, got {args.poly_degree}")
        options.poly_degree = args.poly_degree
    if args.tolerance is not None:
        if not args.tolerance > 0:
            raise CommandError(f"--tolerance must be > 0, got {args.tolerance}")
        options.tolerance = args.tolerance
    options.force = args.force
    return options


def _calibration(args, model: Path):
    """(calibration array or None for uniform samples in the input range, its file)."""
    from protected_nn import api
    if args.calibration and args.input_range:
        raise CommandError("give --calibration or --input-range, not both (a calibration file "
                           "defines the range it covers)")
    cal_path = Path(args.calibration) if args.calibration else None
    if cal_path is None and args.input_range is None:
        cal_path = api.calibration_beside(model)
    if cal_path is None:
        return None, None
    # Representative inputs matter: activation fits, the output range (hence the size of the
    # result prime) and the self-check all come from them.
    calibration = load_npy(str(cal_path), "calibration")
    print(f"calibration: {cal_path} ({len(calibration) if calibration.ndim > 1 else 1} input(s))")
    return calibration, cal_path


def _check_card(model_id: str, model: Path, override: dict | None) -> None:
    """The backend refuses to start on a stored model whose card does not say what its outputs
    mean: refuse an invalid card now, warn when there is none (infer/decrypt still work)."""
    import onnx

    from protected_nn.model_card import CardError, card_from_onnx
    try:
        onnx_model = onnx.load(str(model), load_external_data=False)
    except Exception:
        return   # not a readable model: protect itself says so, with its own message
    metadata = {p.key: p.value for p in onnx_model.metadata_props}
    try:   # the shapes are checked against the card by protect itself, once the model is read
        card = card_from_onnx(model_id, metadata, None, None, override)
    except CardError as exc:
        raise CommandError(f"{exc} (from the ONNX metadata fhe_edge.* of {model}; fix it or give "
                           f"--card CARD.yaml, see docs/backend.md)") from None
    if not card.outputs:
        print(f"warning: model {model_id} has no model card 'outputs' (neither --card, "
              f"{model.stem}.card.yaml beside the model, nor fhe_edge.outputs in the ONNX "
              f"metadata): infer and decrypt work, but `backend-decryptor run` refuses to start "
              f"with it in its store; give --card CARD.yaml (docs/backend.md, model cards)",
              file=sys.stderr)
        return


def _sha256(model: Path) -> str:
    try:
        return hashlib.sha256(model.read_bytes()).hexdigest()
    except OSError as e:
        raise CommandError(f"model file {model}: cannot read: {e.strerror or e}") from None


def _quiet_onnxruntime() -> None:
    """onnxruntime's coloured optimizer warnings are about its own rewrites, not the model."""
    try:
        import onnxruntime
        onnxruntime.set_default_logger_severity(3)
    except ImportError:  # pragma: no cover - a dependency
        pass


def run(args) -> int:
    from backend_decryptor.commands.card_file import card_beside, load_card  # pydantic: slow import
    from protected_nn import api  # imported here so that `--help` stays fast
    validate_model_id(args.model_id)
    model = Path(args.model)
    if not model.is_file():
        raise CommandError(f"model file not found: {model}")
    calibration, cal_path = _calibration(args, model)
    options = _options(args)
    options.calibration_source = str(cal_path) if cal_path else None
    card_path = Path(args.card) if args.card else card_beside(model)
    if card_path is not None:
        if not card_path.is_file():
            raise CommandError(f"model card file not found: {card_path}")
        options.model_card = load_card(card_path)
        print(f"model card: {card_path}")
    _check_card(args.model_id, model, options.model_card)
    _quiet_onnxruntime()
    root = store_path(args)
    existed = root.exists()
    try:
        store = open_store(args, create=True)  # before the slow part: a bad --store fails at once
        onnx_sha256 = _sha256(model)
        protected = api.protect(model, calibration=calibration, options=options)
        print(protected.report_text)
        try:
            fingerprint = store.add_model(args.model_id, protected, onnx_sha256)
        except (OSError, sqlite3.Error) as e:
            raise CommandError(f"--store {root}: cannot store model {args.model_id}: "
                               f"{store_failure(e)}") from None
    except BaseException:
        if not existed:
            remove_empty_store(root)   # a failed first protect leaves nothing behind
        raise
    calibrated = protected.report.get("calibration", {})
    if calibrated:
        print(f"calibrated input range: [{calibrated['input_range'][0]:g}, "
              f"{calibrated['input_range'][1]:g}] ({calibrated['description']})")
    print(f"stored model {args.model_id} key {fingerprint} (active) in {store.root}")
    return 0
