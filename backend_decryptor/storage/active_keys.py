"""Which key versions every replica must hold, recorded in the shared database.

When a replica starts, it records the active key version (fingerprint and number) of every model
in its store, unless the database already has that model at a newer version; then it refuses to
start if the database names an active key its store lacks (or whose secret key it cannot read).
Why: MQTT shared subscriptions give every replica a share of EVERY model's results, so a replica
without one of the keys would turn its share of that model's results into unknown_key drops.
Provisioning a host is `backend-decryptor models export-keys ID... --out FILE` on a host that has
them and `models import-keys FILE` on the new one (docs/backend.md, "Several hosts").
"""
from __future__ import annotations

from backend_decryptor.store import Store, StoreError


class MissingKeys(ValueError):
    pass


def store_active_keys(store: Store) -> list[tuple[str, str, int]]:
    return [(m, fp, store.key_version(m, fp)) for m in store.model_ids()
            for fp in [store.active_fingerprint(m)]]


def record_and_check(db, store: Store) -> list[tuple[str, str, int]]:
    """Record this store's active keys, then check it holds every key the database says is
    active; returns what the database says is active (model, fingerprint, version)."""
    db.record_active_keys(store_active_keys(store))
    active = db.active_keys()
    missing = []
    for model_id, (fp, version) in sorted(active.items()):
        try:
            if fp not in store.fingerprints(model_id):
                raise StoreError("not in this store")
            store.secret_key(model_id, fp)
        except StoreError:
            missing.append(f"{model_id} v{version} ({fp})")
    if missing:
        raise MissingKeys(
            f"this replica's store {store.root} lacks key(s) the database says are active: {', '.join(missing)}; "
            "copy them from a host that has them: `backend-decryptor models export-keys ID... --out FILE` there, "
            "`backend-decryptor models import-keys FILE` here")
    return [(m, fp, v) for m, (fp, v) in sorted(active.items())]
