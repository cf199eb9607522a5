"""Schema versions: a state.db written by the SQLite-only backend (before storage/ existed) opens
and is migrated forward in place with its data; PostgreSQL at version 1 is migrated the same way;
a database newer than the code is refused; two replicas opening a fresh database migrate once."""
from __future__ import annotations

import json
import sqlite3
import threading

import pytest

from backend_decryptor.storage import schema
from backend_decryptor.storage.postgres import PostgresStateDB
from backend_decryptor.storage.sqlite import StateDB
from tests.support.postgres import PASSWORD

# Verbatim the SCHEMA of backend_decryptor/history.py before the storage package (commit bcf934b).
OLD_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (
    gateway TEXT NOT NULL, camera TEXT NOT NULL, sequence INTEGER NOT NULL, capture_time REAL NOT NULL,
    PRIMARY KEY (gateway, camera, sequence)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_time ON seen (capture_time);
CREATE TABLE IF NOT EXISTS camera_state (
    camera TEXT PRIMARY KEY, zone TEXT, state TEXT NOT NULL, published_at REAL);
CREATE TABLE IF NOT EXISTS alerts (
    row INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, camera TEXT NOT NULL, zone TEXT,
    type TEXT NOT NULL, event TEXT NOT NULL, level TEXT NOT NULL, time REAL NOT NULL,
    raised_at REAL, meta TEXT NOT NULL, recorded_at REAL NOT NULL, replica TEXT NOT NULL,
    published INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS alerts_time ON alerts (time);
CREATE TABLE IF NOT EXISTS counters (
    camera TEXT PRIMARY KEY, messages INTEGER NOT NULL DEFAULT 0, raised INTEGER NOT NULL DEFAULT 0,
    updated INTEGER NOT NULL DEFAULT 0, cleared INTEGER NOT NULL DEFAULT 0, last_time REAL);
CREATE TABLE IF NOT EXISTS camera_owner (
    camera TEXT PRIMARY KEY, gateway TEXT NOT NULL, bound_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS camera_owner_gateway ON camera_owner (gateway);
CREATE TABLE IF NOT EXISTS rejections (reason TEXT PRIMARY KEY, count INTEGER NOT NULL DEFAULT 0);
"""
ROWS = [
    "INSERT INTO seen VALUES ('gw-1', 'cam-1', 41, 1000.0)",
    "INSERT INTO camera_state VALUES ('cam-1', 'zone-a', '{\"crowd_streak\": 3, \"crowd_alert\": \"a1\"}', 990.0)",
    "INSERT INTO alerts (id, camera, zone, type, event, level, time, raised_at, meta, recorded_at, replica, "
    "published) VALUES ('a1', 'cam-1', 'zone-a', 'crowd', 'raised', 'high', 999.0, 999.0, '{\"event_no\": 1}', "
    "999.5, 'backend-1', 0)",
    "INSERT INTO counters VALUES ('cam-1', 41, 1, 0, 0, 1000.0)",
    "INSERT INTO camera_owner VALUES ('cam-1', 'gw-1', 900.0)",
    "INSERT INTO rejections VALUES ('replayed', 4)",
]


def check_migrated(db) -> None:
    assert db.schema_version() == schema.LATEST
    assert db.is_seen("gw-1", "cam-1", 41)
    assert db.apply("gw-1", "cam-1", 41, 1000.0, "zone-a", lambda old: (old, [])) is None   # still a replay
    assert db.camera_state("cam-1") == ("zone-a", {"crowd_streak": 3, "crowd_alert": "a1"})
    assert db.counters()["cam-1"]["messages"] == 41 and db.rejections() == {"replayed": 4}
    assert db.camera_owners() == {"cam-1": "gw-1"}
    # the old replica's unacknowledged alert is still its outbox after the upgrade
    [pending] = db.pending_alerts()
    assert pending.event.id == "a1" and pending.event.meta == {"event_no": 1} and not pending.published
    state, _, published_at = db.apply("gw-1", "cam-1", 42, 1001.0, "zone-a",
                                      lambda old: ({**old, "crowd_streak": 4}, []))
    assert state["crowd_streak"] == 4 and published_at == 990.0
    assert db.counters()["cam-1"]["messages"] == 42


def test_a_state_db_from_the_sqlite_only_backend_opens_and_migrates(tmp_path):
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    conn.executescript(OLD_SQLITE_SCHEMA)
    for sql in ROWS:
        conn.execute(sql)
    conn.commit()
    conn.close()
    db = StateDB(path, replica="backend-1")
    check_migrated(db)
    versions = [r[0] for r in db._conn().execute("SELECT version FROM schema_version ORDER BY version")]
    assert versions == [1, 2]
    db.close()
    assert StateDB(path, replica="backend-1").schema_version() == schema.LATEST   # reopening changes nothing


def test_postgresql_at_version_1_migrates_forward(postgres_server):
    name = postgres_server.fresh_database()
    with postgres_server.connect(name) as conn:
        conn.execute(schema.VERSION_TABLE["postgres"])
        for version, description, statements in schema.pending(0, "postgres", upto=1):
            for sql in statements:
                conn.execute(sql)
            conn.execute("INSERT INTO schema_version VALUES (%s, 0, %s)", (version, description))
        for sql in ROWS:
            conn.execute(sql)
    db = PostgresStateDB(postgres_server.url(name) + "?sslmode=disable", replica="backend-1", password=PASSWORD)
    try:
        check_migrated(db)
    finally:
        db.close()


def test_a_newer_schema_is_refused(tmp_path, postgres_server):
    StateDB(tmp_path / "state.db").close()
    conn = sqlite3.connect(tmp_path / "state.db")
    conn.execute("INSERT INTO schema_version VALUES (99, 0, 'from the future')")
    conn.commit()
    conn.close()
    with pytest.raises(schema.SchemaTooNew, match="version 99"):
        StateDB(tmp_path / "state.db")
    name = postgres_server.fresh_database()
    url = postgres_server.url(name) + "?sslmode=disable"
    PostgresStateDB(url, password=PASSWORD).close()
    with postgres_server.connect(name) as conn:
        conn.execute("INSERT INTO schema_version VALUES (99, 0, 'from the future')")
    with pytest.raises(schema.SchemaTooNew, match="upgrade this replica"):
        PostgresStateDB(url, password=PASSWORD)


def test_replicas_starting_together_migrate_once(postgres_server):
    url = postgres_server.url(postgres_server.fresh_database()) + "?sslmode=disable"
    dbs, errors, barrier = [], [], threading.Barrier(4)

    def start(i):
        barrier.wait()
        try:
            dbs.append(PostgresStateDB(url, replica=f"backend-{i}", password=PASSWORD))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
    threads = [threading.Thread(target=start, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert not errors, errors
        rows = dbs[0]._all_rows("SELECT version FROM schema_version ORDER BY version")
        assert [r[0] for r in rows] == [1, 2]
    finally:
        for db in dbs:
            db.close()
