"""`backend-decryptor models`: list the store's models and key versions;
`backend-decryptor models retire ID --key-version V`: stop accepting results under an old key."""
from __future__ import annotations

import argparse

from backend_decryptor.commands.common import add_store_argument, open_store


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="list stored models and their key versions; retire an old key version",
                       description="Without a sub-command: one line per key version (model id, version, "
                                   "key fingerprint, created, active / old / retired).")
    add_store_argument(p)
    p.set_defaults(func=run)
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    r = actions.add_parser("retire", help="delete an old key version: results under it are refused",
                           description="Delete a non-active key version (its secret key included) from the "
                                       "store. A running backend refuses results under it as unknown_key "
                                       "within its catalog refresh interval (2 s); results still queued "
                                       "under it are lost, so retire only once every gateway runs the new "
                                       "bundle. The version number is never reused.")
    r.add_argument("model_id", metavar="ID")
    r.add_argument("--key-version", required=True, metavar="V",
                   help="version number (from `models`) or key fingerprint")
    # SUPPRESS: `models --store X retire ...` must keep X (a sub-parser default would overwrite it).
    r.add_argument("--store", metavar="DIR", default=argparse.SUPPRESS, help="as for `models`")
    r.set_defaults(func=retire)


def _status(row: dict) -> str:
    if row["retired"]:
        return f"retired {row['retired']}"
    return "active" if row["active"] else "old (accepted)"


def run(args) -> int:
    store = open_store(args)
    rows = store.models()
    if not rows:
        print(f"no models in {store.root}")
    for r in rows:
        print(f"{r['model_id']:<24} v{r['version']:<4} {r['key_fingerprint']}  {r['created']}  {_status(r)}")
    return 0


def retire(args) -> int:
    store = open_store(args)
    row = store.retire(args.model_id, args.key_version)
    print(f"retired model {row['model_id']} key version {row['version']} ({row['key_fingerprint']}): "
          f"its secret key is deleted; results under it are refused as unknown_key")
    return 0
