"""The backend's SQLite state: seen sequences, camera owners, per-camera rule state, alert history,
counters.

One file, WAL mode, shared by the replicas on one host. Everything an inference changes (its
sequence marked seen, the camera's rule state, the alert events, the counters) is written in ONE
`BEGIN IMMEDIATE` transaction, so after a crash or restart a message is either fully handled (and
a redelivery is rejected as replayed) or not at all (and its redelivery is handled normally);
alerts are never raised twice. Alert rows double as an outbox: `published` flips to 1 when the
broker acknowledged the alert message, and a restarted replica republishes its own pending rows.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from backend_decryptor.alerts import AlertEvent

SCHEMA = """
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


@dataclass(frozen=True)
class StoredAlert:
    row: int
    event: AlertEvent
    published: bool


class StateDB:
    """Thread-safe by giving each thread its own connection (sqlite3 connections are per thread)."""

    def __init__(self, path: str | Path, replica: str = "backend"):
        self.path = Path(path)
        self.replica = replica
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        conn = self._conn()
        conn.executescript(SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- checks ---------------------------------------------------------------------------------
    def is_seen(self, gateway: str, camera: str, sequence: int) -> bool:
        row = self._conn().execute("SELECT 1 FROM seen WHERE gateway=? AND camera=? AND sequence=?",
                                   (gateway, camera, sequence)).fetchone()
        return row is not None

    def prune_seen(self, older_than: float) -> int:
        """Forget sequences captured before `older_than`: the skew check rejects those anyway."""
        return self._conn().execute("DELETE FROM seen WHERE capture_time < ?", (older_than,)).rowcount

    def bind_camera(self, gateway: str, camera: str, limit: int) -> str | None:
        """The gateway `camera` belongs to; binds it to `gateway` first if it belongs to none and
        `gateway` holds fewer than `limit` cameras (None when over the limit). One transaction, so
        two replicas (or two gateways) racing for one camera id agree on a single owner."""
        conn = self._conn()
        row = conn.execute("SELECT gateway FROM camera_owner WHERE camera=?", (camera,)).fetchone()
        if row:
            return row[0]
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT gateway FROM camera_owner WHERE camera=?", (camera,)).fetchone()
            if row is None:
                held = conn.execute("SELECT COUNT(*) FROM camera_owner WHERE gateway=?", (gateway,)).fetchone()[0]
                if held >= limit:
                    conn.execute("ROLLBACK")
                    return None
                conn.execute("INSERT INTO camera_owner VALUES (?, ?, ?)", (camera, gateway, time.time()))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return row[0] if row else gateway

    def camera_owners(self) -> dict[str, str]:
        return dict(self._conn().execute("SELECT camera, gateway FROM camera_owner").fetchall())

    def unbind_camera(self, camera: str) -> bool:
        """Free a camera id (it moved to another gateway); True if it was bound."""
        return self._conn().execute("DELETE FROM camera_owner WHERE camera=?", (camera,)).rowcount > 0

    def count_rejection(self, reason: str) -> None:
        self._conn().execute("INSERT INTO rejections (reason, count) VALUES (?, 1) "
                             "ON CONFLICT(reason) DO UPDATE SET count = count + 1", (reason,))

    # -- the one transaction per inference ------------------------------------------------------
    def apply(self, gateway: str, camera: str, sequence: int, capture_time: float, zone: str | None,
              decide: Callable[[dict | None], tuple[dict, list[AlertEvent]]]
              ) -> tuple[dict, list[StoredAlert], float | None] | None:
        """Mark seen, run `decide(old_state) -> (new_state, events)`, store all; None if already seen
        (another replica or an earlier run handled it). Returns (new state, stored events, time the
        camera's state was last published)."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("SELECT 1 FROM seen WHERE gateway=? AND camera=? AND sequence=?",
                            (gateway, camera, sequence)).fetchone():
                conn.execute("ROLLBACK")
                return None
            conn.execute("INSERT INTO seen VALUES (?, ?, ?, ?)", (gateway, camera, sequence, capture_time))
            row = conn.execute("SELECT state, published_at FROM camera_state WHERE camera=?", (camera,)).fetchone()
            old = json.loads(row[0]) if row else None
            new_state, events = decide(old)
            conn.execute("INSERT INTO camera_state (camera, zone, state) VALUES (?, ?, ?) ON CONFLICT(camera) "
                         "DO UPDATE SET zone=excluded.zone, state=excluded.state",
                         (camera, zone, json.dumps(new_state)))
            stored = [StoredAlert(self._insert_alert(conn, ev), ev, False) for ev in events]
            counts = {k: sum(ev.event == k for ev in events) for k in ("raised", "updated", "cleared")}
            conn.execute(
                "INSERT INTO counters (camera, messages, raised, updated, cleared, last_time) VALUES (?, 1, ?, ?, ?, ?) "
                "ON CONFLICT(camera) DO UPDATE SET messages=messages+1, raised=raised+excluded.raised, "
                "updated=updated+excluded.updated, cleared=cleared+excluded.cleared, last_time=excluded.last_time",
                (camera, counts["raised"], counts["updated"], counts["cleared"], capture_time))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return new_state, stored, row[1] if row else None

    def _insert_alert(self, conn: sqlite3.Connection, ev: AlertEvent) -> int:
        cur = conn.execute(
            "INSERT INTO alerts (id, camera, zone, type, event, level, time, raised_at, meta, recorded_at, replica) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (ev.id, ev.camera, ev.zone, ev.type, ev.event, ev.level, ev.time, ev.raised_at,
             json.dumps(ev.meta), time.time(), self.replica))
        return cur.lastrowid

    # -- outbox ---------------------------------------------------------------------------------
    def mark_published(self, rows: list[int]) -> None:
        if rows:
            self._conn().executemany("UPDATE alerts SET published=1 WHERE row=?", [(r,) for r in rows])

    def mark_state_published(self, camera: str, when: float) -> None:
        self._conn().execute("UPDATE camera_state SET published_at=? WHERE camera=?", (when, camera))

    def pending_alerts(self) -> list[StoredAlert]:
        """This replica's alert events the broker has not acknowledged yet (oldest first)."""
        rows = self._conn().execute(
            "SELECT * FROM alerts WHERE published=0 AND replica=? ORDER BY row", (self.replica,)).fetchall()
        return [self._stored(r) for r in rows]

    # -- queries (CLI, tests) -------------------------------------------------------------------
    def alerts(self, since: float | None = None, camera: str | None = None) -> list[StoredAlert]:
        sql, args = "SELECT * FROM alerts WHERE 1=1", []
        if since is not None:
            sql += " AND time >= ?"
            args.append(since)
        if camera is not None:
            sql += " AND camera = ?"
            args.append(camera)
        return [self._stored(r) for r in self._conn().execute(sql + " ORDER BY time, row", args).fetchall()]

    def counters(self) -> dict[str, dict]:
        rows = self._conn().execute("SELECT camera, messages, raised, updated, cleared, last_time FROM counters")
        return {r[0]: dict(zip(("messages", "raised", "updated", "cleared", "last_time"), r[1:])) for r in rows}

    def rejections(self) -> dict[str, int]:
        return dict(self._conn().execute("SELECT reason, count FROM rejections").fetchall())

    def camera_states(self) -> dict[str, tuple[str | None, dict]]:
        rows = self._conn().execute("SELECT camera, zone, state FROM camera_state").fetchall()
        return {r[0]: (r[1], json.loads(r[2])) for r in rows}

    @staticmethod
    def _stored(r) -> StoredAlert:
        row, id_, camera, zone, type_, event, level, t, raised_at, meta, _rec, _rep, published = r
        ev = AlertEvent(id_, camera, zone, type_, event, level, t, raised_at, json.loads(meta))
        return StoredAlert(row, ev, bool(published))
