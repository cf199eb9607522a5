"""PostgreSQL: the one transaction per result goes out in two round trips (pipeline mode), a write
of state whose loss costs nothing goes out in one, "state published at" marks ride on the next
result's transaction (never waiting for another replica's row), and a statement failing inside
the pipeline leaves nothing behind and the connection usable. Round trips are counted from libpq's protocol
trace of the storage's own connection (each time the client sent and then read)."""
from __future__ import annotations

import ctypes
import os
import time

import psycopg
import pytest

from backend_decryptor.alerts import AlertEvent
from backend_decryptor.config import BackendConfig
from backend_decryptor.storage import open_storage


class RoundTrips:
    def __init__(self, conn, path):
        self.path, self.pos = path, 0
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        conn.pgconn.trace(self.fd)
        conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)

    def since_last(self) -> int:
        ctypes.CDLL(None).fflush(None)   # libpq writes the trace through a buffered FILE
        with open(self.path) as f:
            f.seek(self.pos)
            lines = f.read().splitlines()
            self.pos = f.tell()
        trips, last = 0, None
        for direction in (line[:1] for line in lines):
            trips += direction == "B" and last == "F"
            last = direction if direction in ("F", "B") else last
        return trips


@pytest.fixture
def pg_db(postgres_server):
    cfg = BackendConfig.model_validate({"database": postgres_server.database_config(postgres_server.fresh_database())})
    db = open_storage(cfg, replica="backend-rt")
    yield db
    db.close()


def alert(n: int, level="high") -> AlertEvent:
    return AlertEvent(f"a{n}", "cam-1", None, "crowd", "raised", level, float(n), float(n), {"event_no": 1})


def test_apply_costs_two_round_trips_and_soft_writes_one(pg_db, tmp_path):
    pg_db.apply("gw-1", "cam-1", 1, 100.0, None, lambda old: ({"n": 1}, []))   # the camera's row exists now
    rt = RoundTrips(pg_db._conn(), tmp_path / "trace")
    out = pg_db.apply("gw-1", "cam-1", 2, 101.0, None, lambda old: ({"n": old["n"] + 1}, [alert(2), alert(3)]))
    assert rt.since_last() == 2
    state, stored, _ = out
    assert state == {"n": 2} and len({s.row for s in stored}) == 2
    assert [a.row for a in pg_db.alerts()] == [s.row for s in stored]   # the rows apply returned
    rt.since_last()
    pg_db.mark_published([s.row for s in stored])
    assert rt.since_last() == 1
    pg_db.mark_state_published("cam-1", 5.0)   # deferred to the next result's transaction
    assert rt.since_last() == 0
    limiter = pg_db.rate_limiter(1.0, 3, 300.0)
    assert limiter.allow("gw-1", 100.0, 100.0)   # the first call also forgets stale buckets
    rt.since_last()
    assert limiter.allow("gw-1", 100.0, 100.0)
    assert rt.since_last() == 1
    # the network thread's replay check and debit in ONE round trip; a replay spends no token
    pg_db.apply("gw-2", "cam-9", 1, 100.0, None, lambda old: ({"n": 1}, []))
    two = pg_db.rate_limiter(1.0, 2, 300.0)
    assert two.checks_seen
    assert two.allow_unseen("gw-2", "cam-9", 2, 100.0, 100.0) is None
    rt.since_last()
    assert two.allow_unseen("gw-2", "cam-9", 1, 100.0, 100.0) == "replayed"
    assert rt.since_last() == 1
    assert two.allow_unseen("gw-2", "cam-9", 3, 100.0, 100.0) is None          # the 2nd token: not spent above
    assert two.allow_unseen("gw-2", "cam-9", 4, 100.0, 100.0) == "rate_limited"
    assert two.allow_unseen("gw-2", "cam-9", 5, 101.0, 100.0) is None           # refilled by capture time
    assert all(a.published for a in pg_db.alerts()) and pg_db.apply(
        "gw-1", "cam-1", 3, 102.0, None, lambda old: (old, []))[2] == 5.0
    rt.since_last()
    assert pg_db.apply("gw-1", "cam-1", 3, 102.0, None, lambda old: (old, [])) is None   # replay
    assert rt.since_last() == 2   # the answer to "seen?", then the ROLLBACK


def test_a_statement_failing_inside_the_pipeline_leaves_nothing(pg_db):
    for seq in range(-6, 2):   # more than psycopg's prepare_threshold: the statements are prepared
        pg_db.apply("gw-1", "cam-1", seq, 100.0, None, lambda old: ({"n": 1}, []))
    with pytest.raises(psycopg.errors.NotNullViolation):   # level NULL: refused by the alerts table
        pg_db.apply("gw-1", "cam-1", 2, 101.0, None, lambda old: ({"n": 2}, [alert(2, level=None)]))
    assert not pg_db.is_seen("gw-1", "cam-1", 2) and pg_db.camera_state("cam-1")[1] == {"n": 1}
    assert pg_db.alerts() == [] and pg_db.counters()["cam-1"]["messages"] == 8
    assert pg_db.apply("gw-1", "cam-1", 2, 101.0, None, lambda old: ({"n": 2}, [alert(2)]))[0] == {"n": 2}
    assert len(pg_db.alerts()) == 1


def published_at(postgres_server, dbname, camera):
    with postgres_server.connect(dbname) as c:
        return c.execute("SELECT published_at FROM camera_state WHERE camera=%s", (camera,)).fetchone()[0]


def test_state_marks_ride_on_the_next_transaction_and_skip_a_row_another_replica_holds(postgres_server):
    name = postgres_server.fresh_database()
    cfg = BackendConfig.model_validate({"database": postgres_server.database_config(name)})
    db = open_storage(cfg, replica="backend-marks")
    try:
        for cam in ("cam-1", "cam-2", "cam-3"):
            db.apply("gw-1", cam, 1, 100.0, None, lambda old: ({"n": 1}, []))
        db.mark_state_published("cam-1", 50.0)
        db.mark_state_published("cam-3", 70.0)
        with postgres_server.connect(name) as other:    # another replica deciding cam-3 right now
            other.execute("BEGIN")
            other.execute("SELECT 1 FROM camera_state WHERE camera='cam-3' FOR UPDATE")
            t = time.monotonic()
            db.apply("gw-1", "cam-2", 2, 101.0, None, lambda old: ({"n": 2}, []))
            assert time.monotonic() - t < 2, "the mark must not wait for another replica's row"
            assert published_at(postgres_server, name, "cam-1") == 50.0     # written with cam-2's result
            assert published_at(postgres_server, name, "cam-3") is None     # skipped, kept for later
            other.execute("ROLLBACK")
        db.mark_state_published("cam-1", 40.0)                              # never moves back
        assert db.apply("gw-1", "cam-1", 2, 101.0, None, lambda old: ({"n": 2}, []))[2] == 50.0
        assert published_at(postgres_server, name, "cam-3") == 70.0         # the next transaction took it
        db.mark_state_published("cam-2", 80.0)
    finally:
        db.close()                                                          # writes what is left
    db = open_storage(cfg, replica="backend-marks")
    try:
        assert db.apply("gw-1", "cam-2", 3, 102.0, None, lambda old: ({"n": 3}, []))[2] == 80.0
    finally:
        db.close()
