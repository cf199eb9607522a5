"""`backend-decryptor models`: list the store's models and key versions;
`backend-decryptor models retire ID --key-version V`: stop accepting results under an old key;
`backend-decryptor models export-keys ID... --out FILE` / `models import-keys FILE`: provision another
backend host with the keys of the models it serves, and only those (commands/key_file.py)."""
from __future__ import annotations

import argparse

from backend_decryptor.commands.common import CommandError, add_store_argument, open_store


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

    e = actions.add_parser("export-keys", help="write the key versions of the named models to a 0600 key file",
                           description="For another backend host: the named models' key versions that are not "
                                       "retired (or only the active one), secret keys included, in one file "
                                       "created with mode 0600 (never over an existing file). Nothing else of "
                                       "the store goes in it. Move it over a secure channel and delete it after "
                                       "`models import-keys`: anyone holding it can decrypt those models' results.")
    e.add_argument("model_ids", nargs="+", metavar="ID")
    e.add_argument("--out", required=True, metavar="FILE", help="key file to create")
    e.add_argument("--active-only", action="store_true",
                   help="only the active key version (default: every version still accepted)")
    e.add_argument("--store", metavar="DIR", default=argparse.SUPPRESS, help="as for `models`")
    e.set_defaults(func=export_keys)
    i = actions.add_parser("import-keys", help="add the key versions of a key file to this host's store",
                           description="Add every key version in FILE (from `models export-keys`) to the store, "
                                       "created if missing, keeping version numbers; versions the store already "
                                       "has are skipped. A running backend picks them up within 2 s.")
    i.add_argument("file", metavar="FILE")
    i.add_argument("--store", metavar="DIR", default=argparse.SUPPRESS, help="as for `models`")
    i.set_defaults(func=import_keys)


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


def export_keys(args) -> int:
    from pathlib import Path

    from backend_decryptor.commands import key_file
    store = open_store(args)
    rows = key_file.selected_rows(store, args.model_ids, args.active_only)
    size = key_file.write(store, rows, Path(args.out))
    for r in rows:
        print(f"exported {r['model_id']} v{r['version']} {r['key_fingerprint']}{' (active)' if r['active'] else ''}")
    print(f"{args.out}: {len(rows)} key version(s), {size} bytes, mode 0600; it holds SECRET KEYS: move it over a "
          "secure channel, run `backend-decryptor models import-keys` on the other host, then delete it")
    return 0


def import_keys(args) -> int:
    import stat
    import sys
    from pathlib import Path

    from backend_decryptor.commands import key_file
    path = Path(args.file)
    if not path.is_file():
        raise CommandError(f"key file not found: {path}")
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        print(f"warning: {path} is readable by other users (mode {stat.S_IMODE(path.stat().st_mode):o}); "
              "it holds secret keys", file=sys.stderr)
    store = open_store(args, create=True)
    added = 0
    entries = list(key_file.read(path))  # all checked before the store changes
    for row, artifacts, secret_key, report in entries:
        new = store.import_version(row, artifacts, secret_key, report)
        added += new
        state = "imported" if new else "already present:"
        print(f"{state} {row['model_id']} v{row['version']} {row['key_fingerprint']}")
    print(f"{added} key version(s) added to {store.root}; delete {path} once every host that needs it has it")
    return 0
