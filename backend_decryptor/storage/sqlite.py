"""The embedded default: all state in one SQLite file, WAL mode, shared by the replicas on ONE host.

Each write is a `BEGIN IMMEDIATE` transaction (SQLite has one writer at a time, so the cameras'
rows are as good as locked for the whole of `apply_batch`; one transaction per batch is also one
WAL commit instead of one per result). The per-gateway rate limit stays in-process
(per replica, as before this storage layer): replicas on one host are few, and a write per message
in the network thread would contend with the decisions. See base.py for the guarantees.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

from backend_decryptor.alerts import AlertEvent
from backend_decryptor.rate_limit import GatewayRateLimiter
from backend_decryptor.storage import schema
from backend_decryptor.storage.base import (ALERT_COLUMNS, Applied, Decide, Decision, LeaseClock, StoredAlert,
                                            apply_one, event_counts, prune_in_batches, stored_alert)


class StateDB:
    """Thread-safe by giving each thread its own connection (sqlite3 connections are per thread)."""

    def __init__(self, path: str | Path, replica: str = "backend", outbox_lease: float = 30.0):
        self.path = Path(path)
        self.replica = replica
        self.outbox_lease = outbox_lease
        self._lease_clock = LeaseClock(outbox_lease)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._migrate()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    def _write(self, fn):
        """Run fn(conn) in one BEGIN IMMEDIATE transaction."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            out = fn(conn)
            conn.execute("COMMIT")
            return out
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _migrate(self) -> None:
        def run(conn):
            conn.execute(schema.VERSION_TABLE["sqlite"])
            current = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
            for version, description, statements in schema.pending(current, "sqlite"):
                for sql in statements:
                    conn.execute(sql)
                conn.execute("INSERT INTO schema_version VALUES (?, ?, ?)", (version, time.time(), description))
        self._write(run)

    def schema_version(self) -> int:
        return self._conn().execute("SELECT MAX(version) FROM schema_version").fetchone()[0]

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
        row = self._conn().execute("SELECT gateway FROM camera_owner WHERE camera=?", (camera,)).fetchone()
        if row:
            return row[0]

        def bind(conn):
            row = conn.execute("SELECT gateway FROM camera_owner WHERE camera=?", (camera,)).fetchone()
            if row:
                return row[0]
            if conn.execute("SELECT COUNT(*) FROM camera_owner WHERE gateway=?", (gateway,)).fetchone()[0] >= limit:
                return None
            conn.execute("INSERT INTO camera_owner VALUES (?, ?, ?)", (camera, gateway, time.time()))
            return gateway
        return self._write(bind)

    def camera_owners(self) -> dict[str, str]:
        return dict(self._conn().execute("SELECT camera, gateway FROM camera_owner").fetchall())

    def unbind_camera(self, camera: str) -> bool:
        """Free a camera id (it moved to another gateway); True if it was bound."""
        return self._conn().execute("DELETE FROM camera_owner WHERE camera=?", (camera,)).rowcount > 0

    def count_rejection(self, reason: str) -> None:
        self._conn().execute("INSERT INTO rejections (reason, count) VALUES (?, 1) "
                             "ON CONFLICT(reason) DO UPDATE SET count = count + 1", (reason,))

    def rate_limiter(self, rate: float, burst: int, max_clock_skew: float) -> GatewayRateLimiter:
        return GatewayRateLimiter(rate, burst, max_clock_skew)

    # -- the one transaction per batch of results ----------------------------------------------
    def apply(self, gateway: str, camera: str, sequence: int, capture_time: float, zone: str | None,
              decide: Decide) -> Applied | None:
        return apply_one(self, gateway, camera, sequence, capture_time, zone, decide)

    def apply_batch(self, decisions: list[Decision]) -> list[Applied | None | Exception]:
        """One BEGIN IMMEDIATE transaction for the batch (SQLite's one writer: every camera row is
        as good as locked throughout); each result in a savepoint, so one whose decide() raises is
        undone alone. Per result (new state, stored events, time the camera's state was last
        published), None if already seen, or decide()'s exception."""
        def run(conn):
            return [self._apply_one(conn, d) for d in decisions]
        return self._write(run) if decisions else []

    def _apply_one(self, conn: sqlite3.Connection, d: Decision):
        conn.execute("SAVEPOINT result")
        out = None
        try:
            if conn.execute("INSERT INTO seen (gateway, camera, sequence, capture_time, replica) "
                            "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                            (d.gateway, d.camera, d.sequence, d.capture_time, self.replica)).rowcount != 0:
                row = conn.execute("SELECT state, published_at FROM camera_state WHERE camera=?",
                                   (d.camera,)).fetchone()
                try:
                    new_state, events = d.decide(json.loads(row[0]) if row else None)
                except Exception as exc:   # this result only: undo its seen mark, keep the batch
                    conn.execute("ROLLBACK TO result")
                    return exc
                conn.execute("INSERT INTO camera_state (camera, zone, state) VALUES (?, ?, ?) ON CONFLICT(camera) "
                             "DO UPDATE SET zone=excluded.zone, state=excluded.state",
                             (d.camera, d.zone, json.dumps(new_state)))
                stored = [StoredAlert(self._insert_alert(conn, ev), ev, False) for ev in events]
                counts = event_counts(events)
                conn.execute(
                    "INSERT INTO counters (camera, messages, raised, updated, cleared, last_time) "
                    "VALUES (?, 1, ?, ?, ?, ?) ON CONFLICT(camera) DO UPDATE SET messages=messages+1, "
                    "raised=raised+excluded.raised, updated=updated+excluded.updated, "
                    "cleared=cleared+excluded.cleared, last_time=excluded.last_time",
                    (d.camera, counts["raised"], counts["updated"], counts["cleared"], d.capture_time))
                out = new_state, stored, row[1] if row else None
        finally:   # (a database error propagates: _write rolls the whole batch back)
            if conn.in_transaction:
                conn.execute("RELEASE result")
        return out

    def _insert_alert(self, conn: sqlite3.Connection, ev: AlertEvent) -> int:
        now = time.time()
        cur = conn.execute(
            "INSERT INTO alerts (id, camera, zone, type, event, level, time, raised_at, meta, recorded_at, replica, "
            "lease_until) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (ev.id, ev.camera, ev.zone, ev.type, ev.event, ev.level, ev.time, ev.raised_at,
             json.dumps(ev.meta), now, self.replica, now + self.outbox_lease))
        return cur.lastrowid

    # -- outbox ---------------------------------------------------------------------------------
    def mark_published(self, rows: list[int]) -> None:
        if rows:
            self._conn().executemany("UPDATE alerts SET published=1 WHERE row=?", [(r,) for r in rows])

    def mark_state_published(self, camera: str, when: float) -> None:
        self._conn().execute("UPDATE camera_state SET published_at=? WHERE camera=?", (when, camera))

    def pending_alerts(self) -> list[StoredAlert]:
        """This replica's alert events the broker has not acknowledged yet (oldest first), their
        lease renewed: what a restarted replica republishes."""
        def run(conn):
            conn.execute("UPDATE alerts SET lease_until=? WHERE published=0 AND replica=?",
                         (time.time() + self.outbox_lease, self.replica))
            return conn.execute(f"SELECT {ALERT_COLUMNS} FROM alerts WHERE published=0 AND replica=? ORDER BY row",
                                (self.replica,)).fetchall()
        return [stored_alert(r, json.loads) for r in self._write(run)]

    def take_over_alerts(self, batch: int = 100) -> list[StoredAlert]:
        """Every lease/3 s: renew this replica's leases, and take over (at most `batch`) unpublished
        rows of other replicas whose lease ran out; returns those, to be published now."""
        if not self._lease_clock.due():
            return []

        def run(conn):
            now = time.time()
            conn.execute("UPDATE alerts SET lease_until=? WHERE published=0 AND replica=?",
                         (now + self.outbox_lease, self.replica))
            rows = conn.execute(f"SELECT {ALERT_COLUMNS} FROM alerts WHERE published=0 AND lease_until < ? "
                                "AND replica <> ? ORDER BY row LIMIT ?", (now, self.replica, batch)).fetchall()
            conn.executemany("UPDATE alerts SET replica=?, lease_until=? WHERE row=?",
                             [(self.replica, now + self.outbox_lease, r[0]) for r in rows])
            return rows
        return [stored_alert(r, json.loads) for r in self._write(run)]

    def prune_history(self, older_than: float, batch: int = 1000, budget: float = 0.1) -> int:
        """Delete published alert rows captured before `older_than` (never the outbox)."""
        sql = ("DELETE FROM alerts WHERE row IN (SELECT row FROM alerts WHERE published=1 AND time < ? "
               "ORDER BY row LIMIT ?)")
        return prune_in_batches(lambda: self._write(lambda c: c.execute(sql, (older_than, batch)).rowcount),
                                batch, budget)

    # -- keys the replicas must hold ------------------------------------------------------------
    def record_active_keys(self, keys: list[tuple[str, str, int]]) -> None:
        """Record (model id, fingerprint, version) as active unless a newer version is recorded."""
        def run(conn):
            conn.executemany(
                "INSERT INTO active_keys VALUES (?, ?, ?, ?, ?) ON CONFLICT(model_id) DO UPDATE SET "
                "key_fingerprint=excluded.key_fingerprint, version=excluded.version, "
                "recorded_at=excluded.recorded_at, recorded_by=excluded.recorded_by "
                "WHERE excluded.version > active_keys.version",
                [(m, fp, v, time.time(), self.replica) for m, fp, v in keys])
        self._write(run)

    def active_keys(self) -> dict[str, tuple[str, int]]:
        rows = self._conn().execute("SELECT model_id, key_fingerprint, version FROM active_keys").fetchall()
        return {m: (fp, v) for m, fp, v in rows}

    # -- queries (CLI, tests) -------------------------------------------------------------------
    def alerts(self, since: float | None = None, camera: str | None = None) -> list[StoredAlert]:
        sql, args = f"SELECT {ALERT_COLUMNS} FROM alerts WHERE 1=1", []
        if since is not None:
            sql += " AND time >= ?"
            args.append(since)
        if camera is not None:
            sql += " AND camera = ?"
            args.append(camera)
        rows = self._conn().execute(sql + " ORDER BY time, row", args).fetchall()
        return [stored_alert(r, json.loads) for r in rows]

    def counters(self) -> dict[str, dict]:
        rows = self._conn().execute("SELECT camera, messages, raised, updated, cleared, last_time FROM counters")
        return {r[0]: dict(zip(("messages", "raised", "updated", "cleared", "last_time"), r[1:])) for r in rows}

    def rejections(self) -> dict[str, int]:
        return dict(self._conn().execute("SELECT reason, count FROM rejections").fetchall())

    def camera_state(self, camera: str) -> tuple[str | None, dict] | None:
        row = self._conn().execute("SELECT zone, state FROM camera_state WHERE camera=?", (camera,)).fetchone()
        return None if row is None else (row[0], json.loads(row[1]))
