"""Where the backend keeps its state: SQLite (one host, the default) or PostgreSQL (several hosts).

`open_storage(cfg)` picks the implementation from the config's `database:` section; both follow
base.Storage (their guarantees are described in base.py, the SQL in sqlite.py / postgres.py - whose
group commit, a batch of results in one transaction, is postgres_batch.py -, the schema and its
migrations in schema.py).
"""
from __future__ import annotations

from backend_decryptor.storage.base import Storage, StoredAlert

__all__ = ["Storage", "StoredAlert", "open_storage"]


def open_storage(cfg, replica: str | None = None) -> Storage:
    """The state storage named by a BackendConfig (`replica` defaults to its MQTT client id)."""
    db = cfg.database
    replica = replica or cfg.mqtt.client_id
    if db.is_postgres:
        from backend_decryptor.storage.postgres import PostgresStateDB  # psycopg only when used
        return PostgresStateDB(db.conninfo(replica), replica=replica, outbox_lease=db.outbox_lease,
                               password=db.password(), retry_for=db.retry_for)
    from backend_decryptor.storage.sqlite import StateDB
    return StateDB(cfg.sqlite_path(), replica=replica, outbox_lease=db.outbox_lease)
