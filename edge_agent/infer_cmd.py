"""`edge-agent infer --bundle BUNDLE INPUT.npy --out RESULT`: encrypted inference on a tensor file.

INPUT.npy shaped as the model input (batch 1) -> RESULT is one envelope file; N inputs, shaped
(N, *model input) or, for a batch-1 model, (N, *model input[1:]) as `protect --calibration` takes
them -> RESULT is a folder with 000000.result ... (sequence numbers 0..N-1).
A result file holds exactly the bytes the daemon would publish over MQTT for that inference."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from protected_nn import bundle, envelope
from protected_nn.errors import InputError

if TYPE_CHECKING:
    from protected_nn.model_card import ModelCard


def add_parser(sub) -> None:
    p = sub.add_parser("infer", help="encrypt an input tensor and run the protected model on it",
                       description="Encrypt INPUT.npy with the bundle's public key, evaluate the "
                                   "encrypted model and write the encrypted result (no secret key here).")
    p.add_argument("input", metavar="INPUT.npy",
                   help="one input shaped as the model input, e.g. (1, C, H, W); or N inputs: "
                        "(N, C, H, W) as `protect --calibration` takes them, or (N, 1, C, H, W)")
    p.add_argument("--bundle", required=True, metavar="BUNDLE", help="signed model bundle")
    p.add_argument("--out", required=True, metavar="RESULT", help="result file (or folder when N inputs)")
    key = p.add_mutually_exclusive_group(required=True)
    key.add_argument("--owner-key", metavar="owner.pub",
                     help="owner public key (PEM) the bundle must be signed with")
    key.add_argument("--config", metavar="edge.yaml",
                     help="take the owner public key from this gateway config (owner_public_key)")
    key.add_argument("--allow-unsigned", action="store_true",
                     help="do NOT check the bundle signature (testing only; a warning is printed)")
    p.add_argument("--gateway-id", default="local", help="gateway id written into the result (default: local)")
    p.add_argument("--camera-id", default="file", help="camera id written into the result (default: file)")
    p.set_defaults(func=run)


def _owner_key(args):
    """The key to verify with, and a line telling the user which (or that none) was used. Only an
    explicit choice: a key file lying beside the bundle proves nothing (whoever could put the
    bundle there could put the key there too)."""
    if args.owner_key:
        return bundle.load_owner_public_key(args.owner_key), f"bundle signature verified with {args.owner_key}"
    if args.config:
        from edge_agent.config import ConfigError, load_config
        try:
            path = load_config(args.config).owner_public_key
        except ConfigError as e:
            raise InputError(f"--config {args.config}: {e}") from None
        return bundle.load_owner_public_key(path), f"bundle signature verified with {path} (from {args.config})"
    return None, "warning: --allow-unsigned: the bundle signature was NOT checked"


def load_input(path) -> np.ndarray:
    from protected_nn.npy_files import load_array
    x = load_array(path, "input")
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError(f"input {path} has dtype {x.dtype}, expected a floating type (float32)")
    if not np.all(np.isfinite(x)):
        raise InputError(f"input {path} contains NaN or infinite values")
    return x


def split_batch(x: np.ndarray, input_shape: tuple[int, ...], source) -> tuple[list[np.ndarray], bool]:
    """-> (inputs, batched). Exactly the model input shape, or a stack of them: (N, *input
    shape), or - when the model's batch is 1, as `protect --calibration` takes it - a batch
    (N, *input shape[1:]), e.g. (N, C, H, W) for a (1, C, H, W) model."""
    input_shape = tuple(int(d) for d in input_shape)
    if x.shape == input_shape:
        return [x], False
    if x.ndim == len(input_shape) + 1 and x.shape[1:] == input_shape and x.shape[0] >= 1:
        return list(x), True
    if input_shape and input_shape[0] == 1 and x.ndim == len(input_shape) \
            and x.shape[1:] == input_shape[1:] and x.shape[0] >= 1:
        return [item[None] for item in x], True
    rest = ", ".join(map(str, input_shape[1:]))
    batch = f" or (N, {rest})" if input_shape and input_shape[0] == 1 else ""
    raise InputError(f"input {source} has shape {x.shape}; expected the model input shape {input_shape} "
                     f"or a stack (N, {', '.join(map(str, input_shape))}){batch}")


RANGE_SLACK = 0.01   # fraction of the calibrated width an input may exceed it by without a warning


def range_warning(x: np.ndarray, card: ModelCard, source) -> str | None:
    """A warning when the input leaves the range the model was calibrated on (recorded by
    `protect` in the model card): fitted activations and the result's headroom hold only there."""
    if card.calibrated_input_range is None:
        return None
    lo, hi = card.calibrated_input_range
    # A calibration set of real frames seldom holds the extreme pixel value (the shipped model's
    # spans [0, 254/255]), and the activation fits are widened by 10% of their range for this
    # drift (frontend/ops/activations.py): only an excess above 1% of the width is worth a warning.
    slack = RANGE_SLACK * max(hi - lo, 1e-12)
    x_lo, x_hi = float(np.min(x)), float(np.max(x))
    if x_lo >= lo - slack and x_hi <= hi + slack:
        return None
    return (f"warning: input {source} spans [{x_lo:g}, {x_hi:g}], outside the calibrated input range "
            f"[{lo:g}, {hi:g}] of this model: results may be wrong or fail to decrypt (overflow); "
            f"scale the input like the calibration data, or protect again with --input-range or "
            f"--calibration covering such inputs")


def _result_folder(out: Path) -> tuple[Path, bool]:
    """(the folder for N results, whether this run created it)."""
    from protected_nn.npy_files import make_folder
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is a file; with N inputs RESULT must be a folder")
    created = not out.exists()
    make_folder(out, "--out")
    if any(out.iterdir()):
        raise InputError(f"result folder {out} is not empty; results must not mix with older ones")
    return out, created


def _undo(written: list[Path], folder: Path | None, created: bool) -> None:
    """A failed batch leaves nothing of this run: no partial set of results to mistake for all."""
    for path in written:
        path.unlink(missing_ok=True)
    if folder is not None and created:
        try:
            folder.rmdir()
        except OSError:
            pass


def run(args) -> int:
    from protected_nn.api import EdgeModel  # edge side of the facade: public artifacts only
    for name in ("gateway_id", "camera_id"):
        if not envelope.valid_field(getattr(args, name)):
            raise InputError(f"--{name.replace('_', '-')} {getattr(args, name)!r}: expected 1..64 chars of [A-Za-z0-9._-]")
    bundle_path = Path(args.bundle)
    key, key_note = _owner_key(args)
    manifest, artifacts = bundle.read_bundle(bundle_path, key)
    print(key_note, file=sys.stderr if key is None else sys.stdout)
    x = load_input(args.input)
    model = EdgeModel(artifacts)
    del artifacts         # the model keeps what it needs; the bundle's bytes (the size of the bundle) go
    inputs, batched = split_batch(x, model.input_shape, args.input)
    warning = range_warning(x, model.model_card, args.input)
    if warning:
        print(warning, file=sys.stderr)
    out = Path(args.out)
    folder, created = _result_folder(out) if batched else (None, False)
    written: list[Path] = []
    try:
        times, sizes = _infer_all(args, model, manifest, inputs, folder or out, written, folder is not None)
    except BaseException:
        _undo(written, folder, created)
        raise
    print(f"model {manifest['model_id']} key {model.key_fingerprint}: {len(inputs)} inference(s), "
          f"{np.mean(times):.3f} s each, result {max(sizes)} bytes -> {out}")
    return 0


def _infer_all(args, model, manifest, inputs, out: Path, written: list[Path], batched: bool):
    from protected_nn.npy_files import write_file
    times, sizes = [], []
    for sequence, item in enumerate(inputs):
        capture_time = time.time()
        t0 = time.perf_counter()
        payload = model.infer(np.ascontiguousarray(item, dtype=np.float32))
        times.append(time.perf_counter() - t0)
        data = envelope.encode(envelope.Envelope(
            model_id=manifest["model_id"], key_fingerprint=model.key_fingerprint,
            gateway_id=args.gateway_id, camera_id=args.camera_id, sequence=sequence,
            capture_time=capture_time, payload=payload))
        sizes.append(len(data))
        path = out / f"{sequence:06d}.result" if batched else out
        write_file(path, data, "--out")
        written.append(path)
    return times, sizes
