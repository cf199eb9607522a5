"""All state in PostgreSQL (psycopg 3, plain SQL), shared by replicas on any number of hosts.

How each guarantee of base.py holds across hosts:
- replay window: `INSERT INTO seen ... ON CONFLICT DO NOTHING` inside `apply`'s transaction; a
  second replica inserting the same sequence waits for the first one's commit and then inserts
  nothing, which tells it the result was a replay (or already handled by the other).
- rule state: `SELECT ... ORDER BY camera FOR UPDATE` on the batch's camera rows, so two replicas
  handling results of one camera take turns on the whole read-decide-write, and batches sharing
  cameras lock them in one order (no deadlock; one would be retried: postgres_batch.py).
- outbox: leases taken with `FOR UPDATE SKIP LOCKED`, so two replicas looking for expired rows
  at once take disjoint sets.
- rate limit: one row per gateway, refilled and debited by a single atomic upsert (rate_limit.py
  explains the bucket).
Round trips: statements go out in psycopg's pipeline mode, so `apply_batch` costs two per batch
of results (BEGIN + row locks + seen; then states + alerts + counters + deferred state marks +
COMMIT: ONE commit, one disk flush, for the batch) and every other write one; psycopg prepares a statement on the server from its 5th use. Durability per write: _SOFT.
Each thread has its own connection (autocommit; explicit transactions). A lost connection is
re-opened and the operation retried for up to `retry_for` seconds (backpressure: the decision
thread waits, and the broker stops delivering beyond mqtt.max_in_flight); after that the error
reaches the pipeline, which drops that one result as internal_error.
"""
from __future__ import annotations

import json
import logging
import threading
import time

import psycopg

from backend_decryptor.rate_limit import StoredRateLimiter
from backend_decryptor.storage import postgres_batch, schema
from backend_decryptor.storage.base import (ALERT_COLUMNS, Applied, Decide, Decision, LeaseClock, StoredAlert,
                                            apply_one, prune_in_batches, stored_alert)
from backend_decryptor.storage.postgres_batch import WRITE_STATE_MARKS

log = logging.getLogger(__name__)
_MIGRATION_LOCK = 0x6668_6564_6765  # pg_advisory_xact_lock key: one migrating replica at a time


# Writes whose loss in a crash of PostgreSQL costs nothing the guarantees need (a token debit, a
# rejection count, when a state was last published, an alert's "published" mark: at worst one
# republication, which MQTT's at-least-once allows): committed without waiting for the disk.
# The next durable commit (the next result's) flushes them too, the WAL being sequential.
_SOFT = "SET LOCAL synchronous_commit TO OFF"
# The token bucket's refill, cap and debit (rate_limit.py); the WHERE leaves the row untouched
# (and returns nothing) when no token is left.
_REFILLED = "LEAST(%(burst)s, b.tokens + GREATEST(0, %(t)s - b.horizon) * %(rate)s)"
_DEBIT = (f"ON CONFLICT (gateway) DO UPDATE SET tokens = {_REFILLED} - 1, horizon = GREATEST(b.horizon, %(t)s) "
          f"WHERE {_REFILLED} >= 1")


def _rollback(conn: psycopg.Connection) -> None:
    """End a transaction a failed pipeline left open (unless the connection itself is gone)."""
    if not conn.closed and not conn.broken and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.execute("ROLLBACK")


class PostgresStateDB:
    def __init__(self, conninfo: str, replica: str = "backend", outbox_lease: float = 30.0,
                 password: str | None = None, retry_for: float = 10.0):
        self.conninfo = conninfo
        self.replica = replica
        self.outbox_lease = outbox_lease
        self.retry_for = retry_for
        self._password = password
        self._lease_clock = LeaseClock(outbox_lease)
        self._state_marks: dict[str, float] = {}   # camera -> state published at, not yet written
        self._known_cameras: set[str] = set()      # cameras whose camera_state row exists
        self._marks_lock = threading.Lock()
        self._local = threading.local()
        self._all: list[psycopg.Connection] = []
        self._all_lock = threading.Lock()
        self._migrate()

    # -- connections ----------------------------------------------------------------------------
    def _conn(self) -> psycopg.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            kw = {"password": self._password} if self._password is not None else {}
            conn = psycopg.connect(self.conninfo, autocommit=True, application_name=self.replica[:63], **kw)
            self._local.conn = conn
            with self._all_lock:
                self._all = [c for c in self._all if not c.closed] + [conn]
        return conn

    def _run(self, fn, transaction: bool = True, retry: bool = True):
        """fn(conn) in one transaction, retried on a lost connection for up to retry_for seconds."""
        deadline = time.monotonic() + (self.retry_for if retry else 0.0)
        delay = 0.1
        while True:
            try:
                conn = self._conn()
                if not transaction:
                    return fn(conn)
                with conn.transaction():
                    return fn(conn)
            except psycopg.OperationalError as exc:
                conn = getattr(self._local, "conn", None)
                if conn is not None and not conn.broken and not conn.closed:
                    raise  # a query error on a working connection: not ours to retry
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("database connection lost (%s); retrying", str(exc).strip()[:200])
                time.sleep(delay)
                delay = min(2.0, delay * 2)

    def _soft_write(self, sql: str, args=(), result=lambda cur: None):
        """One statement in its own transaction, committed without waiting for the disk (_SOFT),
        in one round trip: BEGIN, SET LOCAL, the statement and COMMIT go out in one pipeline."""
        def run(conn):
            try:
                with conn.pipeline():
                    conn.execute("BEGIN")
                    conn.execute(_SOFT)
                    cur = conn.execute(sql, args)
                    conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
            return result(cur)
        return self._run(run, transaction=False)

    def _one(self, sql: str, args=()):
        return self._run(lambda c: c.execute(sql, args).fetchone(), transaction=False)

    def _all_rows(self, sql: str, args=()):
        return self._run(lambda c: c.execute(sql, args).fetchall(), transaction=False)

    def _migrate(self) -> None:
        def run(conn):
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute(schema.VERSION_TABLE["postgres"])
            current = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
            for version, description, statements in schema.pending(current, "postgres"):
                for sql in statements:
                    conn.execute(sql)
                conn.execute("INSERT INTO schema_version VALUES (%s, %s, %s)", (version, time.time(), description))
        self._run(run, retry=False)  # at start: a wrong address, password or certificate fails at once

    def schema_version(self) -> int:
        return self._one("SELECT MAX(version) FROM schema_version")[0]

    def close(self) -> None:
        with self._marks_lock:
            marks, self._state_marks = self._state_marks, {}
        if marks:
            try:
                self._soft_write(WRITE_STATE_MARKS.replace(" SKIP LOCKED", ""), (list(marks), list(marks.values()),
                                                                                  list(marks)))
            except psycopg.Error:   # the database is gone: the states are republished once, no more
                log.warning("could not record when %d camera states were published", len(marks))
        with self._all_lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()

    # -- checks ---------------------------------------------------------------------------------
    def is_seen(self, gateway: str, camera: str, sequence: int) -> bool:
        return self._one("SELECT 1 FROM seen WHERE gateway=%s AND camera=%s AND sequence=%s",
                         (gateway, camera, sequence)) is not None

    def prune_seen(self, older_than: float) -> int:
        return self._soft_write("DELETE FROM seen WHERE capture_time < %s", (older_than,), lambda cur: cur.rowcount)

    def bind_camera(self, gateway: str, camera: str, limit: int) -> str | None:
        row = self._one("SELECT gateway FROM camera_owner WHERE camera=%s", (camera,))
        if row:
            return row[0]

        def bind(conn):
            # One binder per gateway at a time, so two replicas cannot both take its last free slot.
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ("camera_owner:" + gateway,))
            row = conn.execute("SELECT gateway FROM camera_owner WHERE camera=%s", (camera,)).fetchone()
            if row:
                return row[0]
            if conn.execute("SELECT COUNT(*) FROM camera_owner WHERE gateway=%s", (gateway,)).fetchone()[0] >= limit:
                return None
            row = conn.execute("INSERT INTO camera_owner VALUES (%s, %s, %s) ON CONFLICT (camera) DO NOTHING "
                               "RETURNING gateway", (camera, gateway, time.time())).fetchone()
            if row is None:  # bound meanwhile (by a binder for another gateway)
                return conn.execute("SELECT gateway FROM camera_owner WHERE camera=%s", (camera,)).fetchone()[0]
            return gateway
        return self._run(bind)

    def camera_owners(self) -> dict[str, str]:
        return dict(self._all_rows("SELECT camera, gateway FROM camera_owner"))

    def unbind_camera(self, camera: str) -> bool:
        return self._run(lambda c: c.execute("DELETE FROM camera_owner WHERE camera=%s", (camera,)).rowcount > 0,
                         transaction=False)

    def count_rejection(self, reason: str) -> None:
        self._soft_write("INSERT INTO rejections (reason, count) VALUES (%s, 1) ON CONFLICT (reason) "
                         "DO UPDATE SET count = rejections.count + 1", (reason,))

    def rate_limiter(self, rate: float, burst: int, max_clock_skew: float) -> StoredRateLimiter:
        return StoredRateLimiter(rate, burst, max_clock_skew, self._take_token, self._forget_buckets,
                                 take_unseen=self._take_token_unless_seen)

    def _take_token(self, gateway: str, capture_time: float, rate: float, burst: float) -> bool:
        # One statement: refill by how far capture time advanced, cap at burst, debit one token.
        sql = (f"INSERT INTO rate_buckets AS b (gateway, tokens, horizon) VALUES (%(g)s, %(burst)s - 1, %(t)s) "
               f"{_DEBIT} RETURNING 1")
        args = {"g": gateway, "t": capture_time, "rate": rate, "burst": burst}
        return self._soft_write(sql, args, lambda cur: cur.fetchone() is not None)

    def _take_token_unless_seen(self, gateway: str, camera: str, sequence: int, capture_time: float, rate: float,
                                burst: float) -> str | None:
        """The replay check and the token debit in ONE round trip (the network thread's two per
        message otherwise): "replayed" (no token spent), "rate_limited", or None (go on)."""
        sql = ("WITH hit AS (SELECT EXISTS (SELECT 1 FROM seen WHERE gateway=%(g)s AND camera=%(c)s AND "
               "sequence=%(s)s) AS seen), took AS (INSERT INTO rate_buckets AS b (gateway, tokens, horizon) "
               f"SELECT %(g)s, %(burst)s - 1, %(t)s WHERE NOT (SELECT seen FROM hit) {_DEBIT} RETURNING 1) "
               "SELECT (SELECT seen FROM hit), EXISTS (SELECT 1 FROM took)")
        args = {"g": gateway, "c": camera, "s": sequence, "t": capture_time, "rate": rate, "burst": burst}
        seen, took = self._soft_write(sql, args, lambda cur: cur.fetchone())
        return "replayed" if seen else None if took else "rate_limited"

    def _forget_buckets(self, horizon_before: float) -> None:
        self._soft_write("DELETE FROM rate_buckets WHERE horizon < %s", (horizon_before,))

    # -- the one transaction per batch of results (postgres_batch.py) ---------------------------
    def apply(self, gateway: str, camera: str, sequence: int, capture_time: float, zone: str | None,
              decide: Decide) -> Applied | None:
        return apply_one(self, gateway, camera, sequence, capture_time, zone, decide)

    def apply_batch(self, decisions: list[Decision]) -> list[Applied | None | Exception]:
        return postgres_batch.apply_batch(self, decisions)

    def _forget_state_marks(self, written: dict[str, float]) -> None:
        with self._marks_lock:
            for c, t in written.items():
                if self._state_marks.get(c) == t:   # not marked again meanwhile
                    del self._state_marks[c]

    # -- outbox ---------------------------------------------------------------------------------
    def mark_published(self, rows: list[int]) -> None:
        if rows:
            self._soft_write("UPDATE alerts SET published=1 WHERE row = ANY(%s)", (list(rows),))

    def mark_state_published(self, camera: str, when: float) -> None:
        """Deferred: written by the next result's transaction (whichever camera), no round trip
        of its own. Lost in a crash of this replica, it costs one more publication of that state."""
        with self._marks_lock:
            self._state_marks[camera] = max(when, self._state_marks.get(camera, when))

    def pending_alerts(self) -> list[StoredAlert]:
        rows = self._all_rows(f"UPDATE alerts SET lease_until=%s WHERE published=0 AND replica=%s "
                              f"RETURNING {ALERT_COLUMNS}", (time.time() + self.outbox_lease, self.replica))
        return [stored_alert(r, json.loads) for r in sorted(rows)]

    def take_over_alerts(self, batch: int = 100) -> list[StoredAlert]:
        if not self._lease_clock.due():
            return []

        def run(conn):
            now = time.time()
            conn.execute("UPDATE alerts SET lease_until=%s WHERE published=0 AND replica=%s",
                         (now + self.outbox_lease, self.replica))
            return conn.execute(
                f"UPDATE alerts SET replica=%s, lease_until=%s WHERE row IN (SELECT row FROM alerts "
                f"WHERE published=0 AND lease_until < %s AND replica <> %s ORDER BY row LIMIT %s "
                f"FOR UPDATE SKIP LOCKED) RETURNING {ALERT_COLUMNS}",
                (self.replica, now + self.outbox_lease, now, self.replica, batch)).fetchall()
        return [stored_alert(r, json.loads) for r in sorted(self._run(run))]

    def prune_history(self, older_than: float, batch: int = 1000, budget: float = 0.1) -> int:
        """Delete published alert rows captured before `older_than` (never the outbox); rows another
        replica is deleting are skipped, not waited for."""
        sql = ("DELETE FROM alerts WHERE row IN (SELECT row FROM alerts WHERE published=1 AND time < %s "
               "ORDER BY row LIMIT %s FOR UPDATE SKIP LOCKED)")
        return prune_in_batches(lambda: self._run(lambda c: c.execute(sql, (older_than, batch)).rowcount),
                                batch, budget)

    # -- keys the replicas must hold ------------------------------------------------------------
    def record_active_keys(self, keys: list[tuple[str, str, int]]) -> None:
        def run(conn):
            for m, fp, v in keys:
                conn.execute(
                    "INSERT INTO active_keys AS a VALUES (%s, %s, %s, %s, %s) ON CONFLICT (model_id) DO UPDATE SET "
                    "key_fingerprint=excluded.key_fingerprint, version=excluded.version, "
                    "recorded_at=excluded.recorded_at, recorded_by=excluded.recorded_by "
                    "WHERE excluded.version > a.version", (m, fp, v, time.time(), self.replica))
        self._run(run)

    def active_keys(self) -> dict[str, tuple[str, int]]:
        return {m: (fp, v) for m, fp, v in self._all_rows("SELECT model_id, key_fingerprint, version FROM active_keys")}

    # -- queries (CLI, tests) -------------------------------------------------------------------
    def alerts(self, since: float | None = None, camera: str | None = None) -> list[StoredAlert]:
        sql, args = f"SELECT {ALERT_COLUMNS} FROM alerts WHERE true", []
        if since is not None:
            sql += " AND time >= %s"
            args.append(since)
        if camera is not None:
            sql += " AND camera = %s"
            args.append(camera)
        return [stored_alert(r, json.loads) for r in self._all_rows(sql + " ORDER BY time, row", args)]

    def counters(self) -> dict[str, dict]:
        rows = self._all_rows("SELECT camera, messages, raised, updated, cleared, last_time FROM counters")
        return {r[0]: dict(zip(("messages", "raised", "updated", "cleared", "last_time"), r[1:])) for r in rows}

    def rejections(self) -> dict[str, int]:
        return dict(self._all_rows("SELECT reason, count FROM rejections"))

    def camera_state(self, camera: str) -> tuple[str | None, dict] | None:
        row = self._one("SELECT zone, state FROM camera_state WHERE camera=%s", (camera,))
        # 'null': the row was created to be locked (postgres_batch.py) but no result decided yet
        return None if row is None or row[1] == "null" else (row[0], json.loads(row[1]))
