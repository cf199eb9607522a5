"""`backend-decryptor protect MODEL.onnx --model-id ID`: keys + compile + encrypt + self-check + store."""
from __future__ import annotations

import hashlib
from pathlib import Path

from backend_decryptor.commands.common import CommandError, add_store_argument, load_npy, open_store
from backend_decryptor.store import validate_model_id


def add_parser(sub) -> None:
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
                        "drawn uniformly in the input range")
    p.add_argument("--poly-degree", type=int, metavar="K", help="degree of polynomials replacing activations")
    p.add_argument("--tolerance", type=float, metavar="T",
                   help="max |encrypted - onnxruntime| as a fraction of the output range")
    p.add_argument("--force", action="store_true", help="store even if the self-check exceeds the tolerance")
    p.add_argument("--card", metavar="CARD.yaml",
                   help="model card (what the outputs mean); default: MODEL.card.yaml or MODEL.yaml "
                        "beside the model if present, else the card in the ONNX metadata")
    p.set_defaults(func=run)


def _options(args):
    from protected_nn.api import ProtectOptions
    options = ProtectOptions()
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


def run(args) -> int:
    from backend_decryptor.commands.card_file import card_beside, load_card  # pydantic: slow import
    from protected_nn import api  # imported here so that `--help` stays fast
    validate_model_id(args.model_id)
    model = Path(args.model)
    if not model.is_file():
        raise CommandError(f"model file not found: {model}")
    cal_path = Path(args.calibration) if args.calibration else api.calibration_beside(model)
    calibration = None
    if cal_path is not None:
        # Representative inputs matter: activation fits, the output range (hence the size of
        # the result prime) and the self-check all come from them.
        calibration = load_npy(str(cal_path), "calibration")
        print(f"calibration: {cal_path} ({len(calibration) if calibration.ndim > 1 else 1} input(s))")
    options = _options(args)
    card_path = Path(args.card) if args.card else card_beside(model)
    if card_path is not None:
        if not card_path.is_file():
            raise CommandError(f"model card file not found: {card_path}")
        options.model_card = load_card(card_path)
        print(f"model card: {card_path}")
    store = open_store(args, create=True)  # before the slow part: a bad --store fails at once
    onnx_sha256 = hashlib.sha256(model.read_bytes()).hexdigest()
    protected = api.protect(model, calibration=calibration, options=options)
    print(protected.report_text)
    fingerprint = store.add_model(args.model_id, protected, onnx_sha256)
    print(f"stored model {args.model_id} key {fingerprint} (active) in {store.root}")
    return 0
