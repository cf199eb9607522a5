"""`backend-decryptor export ID --out BUNDLE`: the signed deployment bundle for a gateway."""
from __future__ import annotations

import hashlib
import sqlite3
import sys
from pathlib import Path

from backend_decryptor.commands.common import (CommandError, add_store_argument, open_store,
                                               store_failure, write_atomic)
from protected_nn import result_auth
from protected_nn.bundle import build_bundle


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write the signed deployment bundle of a stored model",
                       description="Write the model's active key version as a signed bundle (plan, "
                                   "encrypted parameters, public and evaluation keys; never the secret "
                                   "key), and the owner public key beside it as BUNDLE.owner.pub. The "
                                   "bundle's version is the key version number (`models` lists them); "
                                   "gateways refuse a bundle older than the one they run.")
    p.add_argument("model_id", metavar="ID", help="model id in the store (`backend-decryptor models` lists them)")
    p.add_argument("--out", required=True, metavar="BUNDLE", help="bundle file to write")
    add_store_argument(p)
    p.set_defaults(func=run)


def owner_pub_path(bundle_path: Path) -> Path:
    return bundle_path.with_name(bundle_path.name + ".owner.pub")


def run(args) -> int:
    store = open_store(args)
    fingerprint = store.active_fingerprint(args.model_id)
    artifacts = store.artifacts(args.model_id, fingerprint)
    version = store.key_version(args.model_id, fingerprint)
    out = Path(args.out)
    secret = store.secret_key(args.model_id, fingerprint)
    # The public half of the key results are authenticated under (envelope v3, result_auth.py)
    result_key = result_auth.public_text(result_auth.model_result_key(secret, fingerprint))
    data = build_bundle(args.model_id, artifacts, store.signing_key(), forbidden=secret, version=version,
                        result_key=result_key)
    # written here, not by bundle.write_bundle: a full disk or a missing folder must name --out
    # and leave no temporary file
    write_atomic(out, data, "--out", fsync=True)
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        store.record_export(args.model_id, fingerprint, out, sha256)
    except (OSError, sqlite3.Error) as e:
        raise CommandError(f"--store {store.root}: bundle {out} written, but recording the export "
                           f"failed: {store_failure(e)}") from None
    pub_pem, pub_path = store.owner_public_key_pem(), owner_pub_path(out)
    if not pub_path.exists():
        write_atomic(pub_path, pub_pem, "owner public key (beside --out)")
        pub_note = f"owner public key: {pub_path}"
    elif pub_path.read_bytes() != pub_pem:
        print(f"warning: {pub_path} exists and is NOT this store's owner key; gateways verifying with "
              f"it will refuse the bundle", file=sys.stderr)
        pub_note = f"owner public key: {store.root / 'owner_ed25519.pub.pem'}"
    else:
        pub_note = f"owner public key: {pub_path} (unchanged)"
    print(f"bundle: {out} ({len(data)} bytes, {len(data) / 2**20:.2f} MiB)")
    print(f"model: {args.model_id}  version: {version}  key fingerprint: {fingerprint}  sha256: {sha256}")
    print(pub_note)
    return 0
