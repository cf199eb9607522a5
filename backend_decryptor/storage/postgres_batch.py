"""PostgreSQL: a batch of results in ONE transaction (group commit), shared by replicas on any host.

Two round trips per batch, in psycopg's pipeline mode:
1) BEGIN; lock the batch's camera rows `ORDER BY camera FOR UPDATE` (every replica locks in the
   same order, so two batches sharing cameras wait for each other instead of deadlocking); mark
   every result seen in one `INSERT ... ON CONFLICT DO NOTHING RETURNING`, AFTER the locks: a
   camera's seen rows are only ever inserted by the holder of its row lock, so that insert never
   waits and the ones it does not return were committed before (replays, or another replica was
   first).
2) after the rules ran for each fresh result in batch order: the new states, the alert rows, the
   counters (one row per camera), the deferred state marks, the seen marks of results whose
   decide() raised taken back, COMMIT.
A deadlock or serialization failure (not expected with the fixed order; a new camera's row is
created before the batch, outside it) rolls the batch back and runs it again, decide() included.
"""
from __future__ import annotations

import json
import logging
import time

import psycopg

from backend_decryptor.storage.base import Applied, Decision, StoredAlert, event_counts

log = logging.getLogger(__name__)
RETRIES = 5

_CREATE_ROWS = ("INSERT INTO camera_state (camera, zone, state) SELECT c, z, 'null' FROM unnest(%s::text[], "
                "%s::text[]) AS x(c, z) ORDER BY c ON CONFLICT (camera) DO NOTHING")
_LOCK_ROWS = ("SELECT camera, state, published_at FROM camera_state WHERE camera = ANY(%s) "
              "ORDER BY camera FOR UPDATE")
_MARK_SEEN = ("INSERT INTO seen (gateway, camera, sequence, capture_time, replica) "
              "SELECT g, c, s, t, %s FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::float8[]) AS x(g, c, s, t) "
              "ON CONFLICT DO NOTHING RETURNING gateway, camera, sequence")
_UNMARK_SEEN = ("DELETE FROM seen WHERE (gateway, camera, sequence) IN "
                "(SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[]))")
_WRITE_STATES = ("UPDATE camera_state s SET zone=m.z, state=m.st, published_at=GREATEST(s.published_at, m.p) "
                 "FROM unnest(%s::text[], %s::text[], %s::text[], %s::float8[]) AS m(c, z, st, p) WHERE s.camera = m.c")
_COUNT = ("INSERT INTO counters AS c (camera, messages, raised, updated, cleared, last_time) "
          "SELECT * FROM unnest(%s::text[], %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[], %s::float8[]) "
          "ON CONFLICT (camera) DO UPDATE SET messages=c.messages+excluded.messages, "
          "raised=c.raised+excluded.raised, updated=c.updated+excluded.updated, "
          "cleared=c.cleared+excluded.cleared, last_time=excluded.last_time")
# Other cameras' deferred "state published at" marks, riding on the batch's transaction. SKIP
# LOCKED: a row another replica holds is left for a later transaction, never waited for (waiting
# for one more camera's row while holding the batch's could deadlock two replicas).
WRITE_STATE_MARKS = ("UPDATE camera_state s SET published_at=GREATEST(s.published_at, m.t) "
                     "FROM unnest(%s::text[], %s::float8[]) AS m(c, t) WHERE s.camera = m.c AND s.camera IN "
                     "(SELECT camera FROM camera_state WHERE camera = ANY(%s) FOR UPDATE SKIP LOCKED) "
                     "RETURNING s.camera")
_INSERT_ALERT = ("INSERT INTO alerts (id, camera, zone, type, event, level, time, raised_at, meta, recorded_at, "
                 "replica, lease_until) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING row")


def apply_batch(db, decisions: list[Decision]) -> list[Applied | None | Exception]:
    """db: a PostgresStateDB (its connection, retry, marks and lease). See the module doc."""
    if not decisions:
        return []
    cameras = sorted({d.camera for d in decisions})
    zones = {d.camera: d.zone for d in decisions}
    for attempt in range(RETRIES):
        missing = [c for c in cameras if c not in db._known_cameras]
        if missing:   # once per camera and process, committed on its own: its row must exist to be locked
            db._run(lambda conn: conn.execute(_CREATE_ROWS, (missing, [zones[c] for c in missing])), transaction=False)
            db._known_cameras.update(missing)
        with db._marks_lock:
            marks = dict(db._state_marks)
        try:
            return db._run(lambda conn: _in_transaction(db, conn, decisions, cameras, marks), transaction=False)
        except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure) as exc:
            if attempt == RETRIES - 1:
                raise
            log.warning("batch of %d results: %s; running it again", len(decisions), type(exc).__name__)
            time.sleep(0.01 * (attempt + 1))
    raise AssertionError("unreachable")


def _in_transaction(db, conn, decisions, cameras, marks):
    try:
        return _two_round_trips(db, conn, decisions, cameras, dict(marks))
    except BaseException:
        if not conn.closed and not conn.broken and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.execute("ROLLBACK")
        raise


def _two_round_trips(db, conn, decisions, cameras, marks):
    with conn.pipeline():
        conn.execute("BEGIN")
        locked = conn.execute(_LOCK_ROWS, (cameras,))
        fresh_cur = conn.execute(_MARK_SEEN, (db.replica, [d.gateway for d in decisions],
                                              [d.camera for d in decisions], [d.sequence for d in decisions],
                                              [d.capture_time for d in decisions]))
        rows = {c: (state, published) for c, state, published in locked.fetchall()}
        fresh = {tuple(r) for r in fresh_cur.fetchall()}
        if len(rows) < len(cameras):   # a row we thought exists is gone: create it next time
            db._known_cameras.difference_update(set(cameras) - set(rows))
            raise psycopg.errors.SerializationFailure("a camera row is missing")
        if not fresh:   # every one a replay
            conn.execute("ROLLBACK")
            return [None] * len(decisions)
        states = {c: json.loads(state) for c, (state, _) in rows.items()}
        out: list = []
        taken, undone, events_of = set(), [], []
        for d in decisions:
            key = (d.gateway, d.camera, d.sequence)
            if key not in fresh or key in taken:   # a replay (or the same result twice in this batch)
                out.append(None)
                continue
            taken.add(key)
            try:
                new_state, events = d.decide(states[d.camera])
            except Exception as exc:   # this result only: its seen mark is taken back below
                undone.append(key)
                out.append(exc)
                continue
            states[d.camera] = new_state
            out.append((new_state, events))
            events_of.append((d, events))
        decided = {d.camera: d for d, _ in events_of}   # per camera: its last decided result
        mine = {c: marks.pop(c) for c in decided if c in marks}   # written with the state, the rest below
        if decided:
            cams = sorted(decided)
            conn.execute(_WRITE_STATES, (cams, [decided[c].zone for c in cams], [json.dumps(states[c]) for c in cams],
                                         [mine.get(c) for c in cams]))
        now = time.time()
        inserts = [[conn.execute(_INSERT_ALERT, (ev.id, ev.camera, ev.zone, ev.type, ev.event, ev.level, ev.time,
                                                 ev.raised_at, json.dumps(ev.meta), now, db.replica,
                                                 now + db.outbox_lease)) for ev in events] for _, events in events_of]
        if decided:
            totals: dict[str, list] = {}
            for d, events in events_of:
                counts = event_counts(events)
                t = totals.setdefault(d.camera, [0, 0, 0, 0, 0.0])
                t[0] += 1
                t[1] += counts["raised"]
                t[2] += counts["updated"]
                t[3] += counts["cleared"]
                t[4] = d.capture_time
            cams = sorted(totals)
            conn.execute(_COUNT, (cams, *([totals[c][i] for c in cams] for i in range(5))))
        if undone:
            conn.execute(_UNMARK_SEEN, tuple(list(x) for x in zip(*undone)))
        others = conn.execute(WRITE_STATE_MARKS, (list(marks), list(marks.values()), list(marks))
                              ) if marks else None
        conn.execute("COMMIT")
    # the pipeline's sync at the end of `with` waited for COMMIT: the rows are committed
    stored_by_result = iter([[StoredAlert(cur.fetchone()[0], ev, False) for cur, ev in zip(curs, events)]
                             for curs, (_, events) in zip(inserts, events_of)])
    written = dict(mine)
    written.update((c, marks[c]) for c, in (others.fetchall() if others else []))
    db._forget_state_marks(written)
    result: list = []
    for d, o in zip(decisions, out):
        if o is None or isinstance(o, Exception):
            result.append(o)
            continue
        published = rows[d.camera][1]
        m = mine.get(d.camera)
        if m is not None and (published is None or m > published):
            published = m
        result.append((o[0], next(stored_by_result), published))
    return result
