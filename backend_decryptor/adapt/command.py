"""`backend-decryptor adapt MODEL.onnx --data X.npy [--labels Y.npy] --out ADAPTED.onnx`."""
from __future__ import annotations

import json
from pathlib import Path

from backend_decryptor.commands.common import CommandError, load_npy


def add_parser(sub) -> None:
    p = sub.add_parser(
        "adapt", help="turn a ReLU/MaxPool CNN into one that runs encrypted (needs the adapt extra)",
        description="Replace every Relu/LeakyRelu/Clip/Sigmoid/Tanh/Softplus by a trainable "
                    "per-channel polynomial and MaxPool by AveragePool, fine-tune on your data "
                    "against the original model's outputs, and write an ONNX model protect runs "
                    "exactly. A tenth of the data is held back: it picks the epoch kept and the "
                    "report is measured on it. See docs/adapt.md.")
    p.add_argument("model", metavar="MODEL.onnx", help="the trained model (ONNX)")
    p.add_argument("--data", metavar="X.npy", help="the owner's inputs, (N, *input shape)")
    p.add_argument("--labels", metavar="Y.npy", help="optional labels: class ids (N,) or targets shaped like the output "
                                                        "(NaN = not known)")
    p.add_argument("--out", required=True, metavar="ADAPTED.onnx", help="the adapted model to write")
    p.add_argument("--degree", type=int, default=2, help="polynomial degree (default 2: one x*x each)")
    p.add_argument("--epochs", type=int, default=30, help="fine-tuning epochs (default 30)")
    p.add_argument("--seed", type=int, default=0, help="seed: split, shuffling, torch (default 0)")
    from backend_decryptor.adapt.run import DEFAULT_LR
    p.add_argument("--lr", type=float, default=DEFAULT_LR, help=f"Adam learning rate (default {DEFAULT_LR:g})")
    p.add_argument("--report-json", metavar="R.json", help="also write the report as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from backend_decryptor.adapt import require_torch
    require_torch()                           # before reading anything: say how to install it
    from backend_decryptor.adapt.run import adapt, calibration_path, check_writable, write_output
    if not Path(args.model).is_file():
        raise CommandError(f"model file not found: {args.model}")
    if not args.data:
        raise CommandError("no data: adapt needs the owner's inputs (--data X.npy)")
    # Everything read and every place written is checked before the training, not after it.
    x = load_npy(args.data, "data")
    y = load_npy(args.labels, "labels") if args.labels else None
    if args.report_json:
        check_writable("--report-json", args.report_json)
    result = adapt(args.model, x, y, out=args.out, degree=args.degree, epochs=args.epochs,
                   seed=args.seed, lr=args.lr, log=lambda m: print(m, flush=True))
    print(result.text)
    if args.report_json:
        write_output("--report-json", args.report_json, json.dumps(result.report, indent=1).encode())
    print(f"wrote {args.out} and {calibration_path(args.out)}; next: "
          f"backend-decryptor protect {args.out} --model-id ID")
    return 0
