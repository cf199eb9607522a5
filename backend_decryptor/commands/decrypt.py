"""`backend-decryptor decrypt ID RESULT --out OUTPUT.npy`: decrypt result files made by a gateway.

RESULT is one envelope file or a folder of them (one per input, stacked in sequence order). Each
envelope must name this model and one of its stored key versions; the matching key decrypts it."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from backend_decryptor.commands.common import CommandError, add_store_argument, open_store, save_npy_atomic
from backend_decryptor.store import Store
from protected_nn import envelope
from protected_nn.errors import ProtectedNNError, ResultError

MAX_RESULT_FILE = 256 * 2**20  # far above any real result; bounds what one file can make us read


def add_parser(sub) -> None:
    p = sub.add_parser("decrypt", help="decrypt a result file (or a folder of them) to a .npy",
                       description="Decrypt inference results with the model's secret key.")
    p.add_argument("model_id", metavar="ID", help="model id in the store (`backend-decryptor models` lists them)")
    p.add_argument("result", metavar="RESULT", help="an envelope file, or a folder of envelope files")
    p.add_argument("--out", required=True, metavar="OUTPUT.npy",
                   help="decrypted output(s) to write; N results are stacked in sequence order")
    add_store_argument(p)
    p.set_defaults(func=run)


def _result_files(result: Path) -> list[Path]:
    if result.is_file():
        return [result]
    if result.is_dir():
        files = sorted(p for p in result.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise CommandError(f"result folder {result} holds no result files")
        return files
    raise CommandError(f"result not found: {result}")


def _read_envelope(path: Path) -> envelope.Envelope:
    try:
        size = path.stat().st_size
        if size > MAX_RESULT_FILE:
            raise CommandError(f"{path}: {size} bytes is too large for a result file")
        data = path.read_bytes()
    except OSError as e:
        raise CommandError(f"result {path}: cannot read: {e.strerror or e}") from None
    try:
        return envelope.decode(data, max_size=MAX_RESULT_FILE)
    except envelope.EnvelopeError as e:
        raise CommandError(f"{path}: not a valid result ({e.reason}): {e}") from None


def _check_key(store: Store, model_id: str, path: Path, env: envelope.Envelope) -> None:
    if env.model_id != model_id:
        raise CommandError(f"{path}: result is for model {env.model_id!r}, not {model_id!r}")
    known = store.fingerprints(model_id)
    if env.key_fingerprint not in known:
        owner = store.model_of_fingerprint(env.key_fingerprint)
        where = f"it belongs to model {owner!r}" if owner else "no model in this store has it"
        raise CommandError(f"{path}: result was encrypted under key {env.key_fingerprint}, which is not a "
                           f"key of model {model_id!r} ({where}; {model_id!r} keys: {', '.join(known)})")


def overflow_hint(card) -> str:
    """The key in the envelope is this model's, so a result that does not decrypt cleanly was
    most likely computed on an input far outside the calibrated range: its values overflowed
    the result's headroom and wrapped around, which looks exactly like another key's result.
    Appended to the decryptor's own message, which lists the possible causes."""
    rng = card.calibrated_input_range
    where = f" [{rng[0]:g}, {rng[1]:g}]" if rng is not None else ""
    return (f". The envelope names this model's key, so the likely cause is an input outside the "
            f"range the model was calibrated on{where}: scale inputs like the calibration data, or "
            f"protect again with --input-range/--calibration covering them")


def run(args) -> int:
    store = open_store(args)
    store.fingerprints(args.model_id)  # unknown model id: clear error before reading anything
    result = Path(args.result)
    files = _result_files(result)
    envelopes = [(path, _read_envelope(path)) for path in files]
    for path, env in envelopes:
        _check_key(store, args.model_id, path, env)
    envelopes.sort(key=lambda pe: pe[1].sequence)
    seen: dict[int, Path] = {}
    for path, env in envelopes:
        if env.sequence in seen:
            raise CommandError(f"{path} and {seen[env.sequence]} both carry sequence number {env.sequence}")
        seen[env.sequence] = path
    outputs = []
    for path, env in envelopes:
        owner = store.owner_model(args.model_id, env.key_fingerprint)
        try:
            outputs.append(np.asarray(owner.decrypt(env.payload)))
        except ResultError as e:
            raise CommandError(f"{path}: {e}{overflow_hint(owner.model_card)}") from None
        except ProtectedNNError as e:
            raise CommandError(f"{path}: {e}") from None
    output = outputs[0] if result.is_file() else np.stack(outputs)
    out = Path(args.out)
    save_npy_atomic(out, output)
    print(f"decrypted {len(outputs)} result(s) of model {args.model_id} -> {out} shape {output.shape}")
    return 0
