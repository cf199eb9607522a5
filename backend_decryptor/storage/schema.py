"""The state schema and its forward migrations, for SQLite and PostgreSQL.

`schema_version` holds one row per applied migration. A database is migrated when a replica (or
`backend-decryptor alerts`) opens it: the missing migrations run in order, each in the same
transaction as its version row, under a lock (SQLite: BEGIN IMMEDIATE; PostgreSQL: an advisory
lock), so two replicas starting together migrate once. Migrations are never edited once released:
a change is a new entry. Version 1 is the schema of the SQLite-only backend (CREATE ... IF NOT
EXISTS), so a state.db written by it opens as version 1 and is migrated forward in place.
A database newer than this code is refused (an old replica must not write a schema it does not
know).
"""
from __future__ import annotations

# (version, what it adds, SQLite statements, PostgreSQL statements)
MIGRATIONS: list[tuple[int, str, list[str], list[str]]] = [
    (1, "seen sequences, camera state and owners, alert history/outbox, counters, rejections", [
        "CREATE TABLE IF NOT EXISTS seen (gateway TEXT NOT NULL, camera TEXT NOT NULL, sequence INTEGER NOT NULL, "
        "capture_time REAL NOT NULL, PRIMARY KEY (gateway, camera, sequence)) WITHOUT ROWID",
        "CREATE INDEX IF NOT EXISTS seen_time ON seen (capture_time)",
        "CREATE TABLE IF NOT EXISTS camera_state (camera TEXT PRIMARY KEY, zone TEXT, state TEXT NOT NULL, "
        "published_at REAL)",
        "CREATE TABLE IF NOT EXISTS alerts (row INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, "
        "camera TEXT NOT NULL, zone TEXT, type TEXT NOT NULL, event TEXT NOT NULL, level TEXT NOT NULL, "
        "time REAL NOT NULL, raised_at REAL, meta TEXT NOT NULL, recorded_at REAL NOT NULL, replica TEXT NOT NULL, "
        "published INTEGER NOT NULL DEFAULT 0)",
        "CREATE INDEX IF NOT EXISTS alerts_time ON alerts (time)",
        "CREATE TABLE IF NOT EXISTS counters (camera TEXT PRIMARY KEY, messages INTEGER NOT NULL DEFAULT 0, "
        "raised INTEGER NOT NULL DEFAULT 0, updated INTEGER NOT NULL DEFAULT 0, cleared INTEGER NOT NULL DEFAULT 0, "
        "last_time REAL)",
        "CREATE TABLE IF NOT EXISTS camera_owner (camera TEXT PRIMARY KEY, gateway TEXT NOT NULL, "
        "bound_at REAL NOT NULL)",
        "CREATE INDEX IF NOT EXISTS camera_owner_gateway ON camera_owner (gateway)",
        "CREATE TABLE IF NOT EXISTS rejections (reason TEXT PRIMARY KEY, count INTEGER NOT NULL DEFAULT 0)",
    ], [
        "CREATE TABLE seen (gateway TEXT NOT NULL, camera TEXT NOT NULL, sequence BIGINT NOT NULL, "
        "capture_time DOUBLE PRECISION NOT NULL, PRIMARY KEY (gateway, camera, sequence))",
        "CREATE INDEX seen_time ON seen (capture_time)",
        "CREATE TABLE camera_state (camera TEXT PRIMARY KEY, zone TEXT, state TEXT NOT NULL, "
        "published_at DOUBLE PRECISION)",
        "CREATE TABLE alerts (row BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, id TEXT NOT NULL, "
        "camera TEXT NOT NULL, zone TEXT, type TEXT NOT NULL, event TEXT NOT NULL, level TEXT NOT NULL, "
        "time DOUBLE PRECISION NOT NULL, raised_at DOUBLE PRECISION, meta TEXT NOT NULL, "
        "recorded_at DOUBLE PRECISION NOT NULL, replica TEXT NOT NULL, published INTEGER NOT NULL DEFAULT 0)",
        "CREATE INDEX alerts_time ON alerts (time)",
        "CREATE TABLE counters (camera TEXT PRIMARY KEY, messages BIGINT NOT NULL DEFAULT 0, "
        "raised BIGINT NOT NULL DEFAULT 0, updated BIGINT NOT NULL DEFAULT 0, cleared BIGINT NOT NULL DEFAULT 0, "
        "last_time DOUBLE PRECISION)",
        "CREATE TABLE camera_owner (camera TEXT PRIMARY KEY, gateway TEXT NOT NULL, bound_at DOUBLE PRECISION NOT NULL)",
        "CREATE INDEX camera_owner_gateway ON camera_owner (gateway)",
        "CREATE TABLE rejections (reason TEXT PRIMARY KEY, count BIGINT NOT NULL DEFAULT 0)",
    ]),
    (2, "several hosts: outbox leases, which replica handled a result, shared rate buckets, active keys", [
        "ALTER TABLE alerts ADD COLUMN lease_until REAL NOT NULL DEFAULT 0",
        "CREATE INDEX alerts_pending ON alerts (lease_until) WHERE published = 0",
        "ALTER TABLE seen ADD COLUMN replica TEXT",
        "CREATE TABLE rate_buckets (gateway TEXT PRIMARY KEY, tokens REAL NOT NULL, horizon REAL NOT NULL)",
        "CREATE TABLE active_keys (model_id TEXT PRIMARY KEY, key_fingerprint TEXT NOT NULL, "
        "version INTEGER NOT NULL, recorded_at REAL NOT NULL, recorded_by TEXT NOT NULL)",
    ], [
        "ALTER TABLE alerts ADD COLUMN lease_until DOUBLE PRECISION NOT NULL DEFAULT 0",
        "CREATE INDEX alerts_pending ON alerts (lease_until) WHERE published = 0",
        "ALTER TABLE seen ADD COLUMN replica TEXT",
        "CREATE TABLE rate_buckets (gateway TEXT PRIMARY KEY, tokens DOUBLE PRECISION NOT NULL, "
        "horizon DOUBLE PRECISION NOT NULL)",
        "CREATE TABLE active_keys (model_id TEXT PRIMARY KEY, key_fingerprint TEXT NOT NULL, "
        "version INTEGER NOT NULL, recorded_at DOUBLE PRECISION NOT NULL, recorded_by TEXT NOT NULL)",
    ]),
]

LATEST = MIGRATIONS[-1][0]
VERSION_TABLE = {
    "sqlite": "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL, "
              "description TEXT NOT NULL)",
    "postgres": "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, "
                "applied_at DOUBLE PRECISION NOT NULL, description TEXT NOT NULL)",
}


class SchemaTooNew(RuntimeError):
    pass


def pending(current: int, dialect: str, upto: int = LATEST) -> list[tuple[int, str, list[str]]]:
    """The migrations after `current` (up to `upto`), as (version, description, statements)."""
    if current > LATEST:
        raise SchemaTooNew(f"the state database has schema version {current}, newer than this backend "
                           f"knows ({LATEST}): upgrade this replica before starting it")
    index = 2 if dialect == "sqlite" else 3
    return [(m[0], m[1], m[index]) for m in MIGRATIONS if current < m[0] <= upto]
