"""The storage contract, run against BOTH implementations (SQLite file, real PostgreSQL): replay
window, one transaction per result with the camera's row locked, camera binding, outbox leases,
the per-gateway token bucket, active keys. Several storages on one database stand for replicas
(each has its own connections); threads make them race."""
from __future__ import annotations

import threading
import time

import pytest

from backend_decryptor.alerts import AlertEvent
from tests.support.storage import make_db  # noqa: F401 (fixture)


def counting(events_at=()):
    """decide(): counts results in the state; raises an alert event when the count hits events_at."""
    def decide(old):
        n = (old or {}).get("n", 0) + 1
        evs = [AlertEvent(f"a{n}", "cam-1", "z", "crowd", "raised", "high", float(n), float(n), {"event_no": 1})
               ] if n in events_at else []
        return {"n": n}, evs
    return decide


def test_apply_stores_state_events_counters_and_refuses_a_replay(make_db):
    db = make_db()
    assert db.schema_version() == 2
    out = db.apply("gw-1", "cam-1", 7, 100.0, "zone-a", counting(events_at={1}))
    state, stored, published_at = out
    assert state == {"n": 1} and published_at is None and len(stored) == 1 and not stored[0].published
    assert db.is_seen("gw-1", "cam-1", 7) and not db.is_seen("gw-1", "cam-1", 8)
    assert db.apply("gw-1", "cam-1", 7, 100.0, "zone-a", counting()) is None      # replay
    assert db.counters()["cam-1"]["messages"] == 1 and db.counters()["cam-1"]["raised"] == 1
    assert db.camera_state("cam-1") == ("zone-a", {"n": 1})
    [alert] = db.alerts()
    assert alert.event.id == "a1" and alert.event.meta == {"event_no": 1} and alert.row == stored[0].row
    db.mark_state_published("cam-1", 123.0)
    assert db.apply("gw-1", "cam-1", 8, 101.0, "zone-a", counting())[2] == 123.0
    db.count_rejection("replayed")
    db.count_rejection("replayed")
    assert db.rejections() == {"replayed": 2}
    assert db.prune_seen(100.5) == 1 and not db.is_seen("gw-1", "cam-1", 7)


def test_a_failing_decision_leaves_no_trace(make_db):
    db = make_db()

    def boom(old):
        raise RuntimeError("rules failed")
    with pytest.raises(RuntimeError):
        db.apply("gw-1", "cam-1", 1, 100.0, None, boom)
    assert not db.is_seen("gw-1", "cam-1", 1) and db.counters() == {} and db.camera_state("cam-1") is None
    assert db.apply("gw-1", "cam-1", 1, 100.0, None, counting()) is not None   # handled normally after


def test_concurrent_results_of_one_camera_take_turns(make_db):
    """4 replicas x 25 results of ONE camera at once: without the row lock two decisions would
    read the same old state and one update would be lost (n < 100)."""
    dbs = [make_db(f"backend-{i}") for i in range(4)]
    errors = []

    def worker(i, db):
        def slow(old):
            time.sleep(0.002)  # widen the read-decide-write window
            return counting()(old)
        try:
            for k in range(25):
                assert db.apply("gw-1", "cam-1", i * 1000 + k, 100.0 + k, None, slow) is not None
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
    threads = [threading.Thread(target=worker, args=(i, db)) for i, db in enumerate(dbs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert dbs[0].camera_state("cam-1")[1] == {"n": 100}
    assert dbs[1].counters()["cam-1"]["messages"] == 100


def test_the_same_result_at_two_replicas_at_once_is_handled_once(make_db):
    dbs = [make_db(f"backend-{i}") for i in range(3)]
    results = []
    barrier = threading.Barrier(3)

    def worker(db):
        barrier.wait()
        results.append(db.apply("gw-1", "cam-1", 5, 100.0, None, counting(events_at={1})))
    threads = [threading.Thread(target=worker, args=(db,)) for db in dbs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(r is not None for r in results) == 1
    assert len(dbs[0].alerts()) == 1 and dbs[0].counters()["cam-1"]["messages"] == 1


def test_camera_binding_one_owner_and_the_limit_hold_across_replicas(make_db):
    dbs = [make_db(f"backend-{i}") for i in range(4)]
    owners, barrier = [], threading.Barrier(4)

    def race(i, db):
        barrier.wait()
        owners.append(db.bind_camera(f"gw-{i}", "cam-x", 10))
    threads = [threading.Thread(target=race, args=(i, db)) for i, db in enumerate(dbs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(set(owners)) == 1 and dbs[0].camera_owners() == {"cam-x": owners[0]}
    # 4 replicas bind 8 cameras of one gateway whose limit is 3: exactly 3 bound
    got, barrier = [], threading.Barrier(4)

    def fill(i, db):
        barrier.wait()
        got.extend(db.bind_camera("gw-9", f"cam-{i}-{k}", 3) for k in range(2))
    threads = [threading.Thread(target=fill, args=(i, db)) for i, db in enumerate(dbs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert got.count("gw-9") == 3 and got.count(None) == 5
    assert sum(g == "gw-9" for g in dbs[0].camera_owners().values()) == 3
    cam = next(c for c, g in dbs[0].camera_owners().items() if g == "gw-9")
    assert dbs[1].unbind_camera(cam) and dbs[2].bind_camera("gw-9", "cam-new", 3) == "gw-9"


def test_outbox_rows_have_one_holder_and_are_taken_over_when_the_lease_runs_out(make_db):
    a = make_db("backend-a", outbox_lease=1.0)
    stored = a.apply("gw-1", "cam-1", 1, 100.0, None, counting(events_at={1}))[1]
    a.apply("gw-1", "cam-1", 2, 101.0, None, lambda old: ({"n": 2}, [
        AlertEvent("b1", "cam-1", None, "incident", "raised", "incident", 2.0, 2.0, {"event_no": 1}),
        AlertEvent("b2", "cam-1", None, "crowd", "updated", "mid", 2.0, 1.0, {"event_no": 2})]))
    rows = {s.row for s in a.alerts()}
    assert len(rows) == 3 and stored[0].row in rows
    b, c = make_db("backend-b", outbox_lease=1.0), make_db("backend-c", outbox_lease=1.0)
    # a lives and renews its lease (its housekeeping calls take_over_alerts): nobody takes its rows
    for _ in range(6):
        time.sleep(0.4)
        assert a.take_over_alerts() == [] and b.take_over_alerts() == [] and c.take_over_alerts() == []
    # a dies: after the lease, b and c look at once and split the rows between them
    time.sleep(1.6)
    taken: dict[str, list] = {}
    barrier = threading.Barrier(2)

    def look(name, db):
        barrier.wait()
        taken[name] = [s.row for s in db.take_over_alerts()]
    threads = [threading.Thread(target=look, args=(n, d)) for n, d in (("b", b), ("c", c))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(taken["b"] + taken["c"]) == sorted(rows), taken
    assert not set(taken["b"]) & set(taken["c"])
    # a restarts: its rows now belong to their new holders, so it republishes none of them
    assert make_db("backend-a", outbox_lease=1.0).pending_alerts() == []
    holder = b if taken["b"] else c
    assert {s.row for s in holder.pending_alerts()} == set(taken["b"] or taken["c"])
    b.mark_published(taken["b"])
    c.mark_published(taken["c"])
    assert all(s.published for s in a.alerts())
    time.sleep(1.5)
    assert b.take_over_alerts() == [] and c.take_over_alerts() == []   # published rows are never taken


def test_token_bucket_refills_by_capture_time_and_is_shared_on_postgresql(make_db):
    a, b = make_db("backend-a"), make_db("backend-b")
    la, lb = a.rate_limiter(2.0, 5, 300.0), b.rate_limiter(2.0, 5, 300.0)
    t = 1000.0
    assert [la.allow("gw-1", t, t) for _ in range(6)] == [True] * 5 + [False]
    assert la.allow("gw-1", t + 1.0, t) and la.allow("gw-1", t + 1.0, t) and not la.allow("gw-1", t + 1.0, t)
    assert not la.allow("gw-1", t - 50, t)   # an older capture time earns nothing
    assert la.allow("gw-2", t, t)            # buckets are per gateway
    if make_db.kind == "postgresql":         # one bucket for all replicas
        assert not lb.allow("gw-1", t + 1.0, t)
        assert lb.allow("gw-1", t + 1.5, t) and not la.allow("gw-1", t + 1.5, t)
    else:                                    # SQLite: in-process, per replica (docs/backend.md)
        assert [lb.allow("gw-1", t, t) for _ in range(6)] == [True] * 5 + [False]


def test_active_keys_only_move_forward(make_db):
    a, b = make_db("backend-a"), make_db("backend-b")
    a.record_active_keys([("crowd", "fp2", 2), ("other", "fpo", 1)])
    b.record_active_keys([("crowd", "fp1", 1)])    # a host with an older store cannot roll back
    assert b.active_keys() == {"crowd": ("fp2", 2), "other": ("fpo", 1)}
    b.record_active_keys([("crowd", "fp3", 3)])
    assert a.active_keys()["crowd"] == ("fp3", 3)


def test_retention_deletes_old_published_history_in_batches_never_the_outbox(make_db):
    db = make_db()
    for seq in range(7):   # alerts captured at t = 1..7
        db.apply("gw-1", "cam-1", seq, 100.0 + seq, None, lambda old, s=seq: ({}, [
            AlertEvent(f"r{s}", "cam-1", None, "crowd", "raised", "high", 1.0 + s, 1.0 + s, {"event_no": 1})]))
    rows = {s.event.id: s.row for s in db.alerts()}
    db.mark_published([rows[f"r{s}"] for s in range(7) if s != 2])   # r2 still in the outbox
    assert db.prune_history(6.0, batch=2, budget=60) == 4            # r0, r1, r3, r4: two at a time
    assert [s.event.id for s in db.alerts()] == ["r2", "r5", "r6"]
    assert db.counters()["cam-1"]["raised"] == 7                      # the counters keep the totals
    assert db.prune_history(6.0) == 0
