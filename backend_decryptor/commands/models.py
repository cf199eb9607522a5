"""`backend-decryptor models`: list the store's models and key versions."""
from __future__ import annotations

from backend_decryptor.commands.common import add_store_argument, open_store


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="list stored models and their key versions")
    add_store_argument(p)
    p.set_defaults(func=run)


def run(args) -> int:
    store = open_store(args)
    rows = store.models()
    if not rows:
        print(f"no models in {store.root}")
    for r in rows:
        print(f"{r['model_id']:<24} {r['key_fingerprint']}  {r['created']}  {'active' if r['active'] else 'old'}")
    return 0
