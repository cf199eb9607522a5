"""Group commit (`apply_batch`), against BOTH storages: a batch of results in one transaction,
each result's outcome on its own (applied, replay, its decide() failed), a camera appearing
twice decided in order, a database error undoing the whole batch, and two replicas applying
interleaved, overlapping batches for the same cameras at once: every result applied exactly
once, and the alerts those of one replica deciding in the order the batches committed."""
from __future__ import annotations

import logging
import random
import threading
import time

import pytest

from backend_decryptor.alerts import AlertEvent
from backend_decryptor.storage.base import Decision
from tests.support.storage import make_db  # noqa: F401 (fixture)


def chain(camera: str, every: int = 3, slow: float = 0.0):
    """decide(): appends the result's sequence to the camera's state; an alert event on every
    `every`-th result of the camera (its id names the position, its meta the sequence)."""
    def make(seq: int):
        def decide(old):
            if slow:
                time.sleep(slow)   # widen the read-decide-write window
            order = (old or {}).get("order", []) + [seq]
            n = len(order)
            evs = [AlertEvent(f"{camera}-{n}", camera, None, "crowd", "raised", "high", float(seq), float(seq),
                              {"event_no": 1, "sequence": seq})] if n % every == 0 else []
            return {"order": order}, evs
        return decide
    return make


def d(camera: str, seq: int, decide, gateway: str = "gw-1") -> Decision:
    return Decision(gateway, camera, seq, 100.0 + seq, "zone-a", decide)


def boom(old):
    raise RuntimeError("rules failed for this result")


def test_a_mixed_batch_commits_the_good_results_and_answers_each_on_its_own(make_db):
    db = make_db()
    c1, c2 = chain("cam-1", every=2), chain("cam-2", every=2)
    assert db.apply("gw-1", "cam-1", 1, 101.0, "zone-a", c1(1)) is not None
    out = db.apply_batch([d("cam-1", 2, c1(2)),       # applied: cam-1's 2nd result, an alert
                          d("cam-1", 1, c1(1)),       # a replay (committed before)
                          d("cam-2", 1, boom),        # its decide fails: only it is lost
                          d("cam-1", 3, c1(3)),       # cam-1 twice in the batch: sees seq 2's state
                          d("cam-2", 2, c2(2)),       # cam-2 goes on from no state
                          d("cam-1", 3, c1(3))])      # the same result twice in one batch: once
    assert out[1] is None and out[5] is None and isinstance(out[2], RuntimeError)
    (s2, a2, _), (s3, a3, _), (s22, a22, _) = out[0], out[3], out[4]
    assert s2 == {"order": [1, 2]} and s3 == {"order": [1, 2, 3]} and s22 == {"order": [2]}
    assert [a.event.id for a in a2] == ["cam-1-2"] and a3 == [] and a22 == []
    assert db.camera_state("cam-1") == ("zone-a", {"order": [1, 2, 3]})
    assert db.camera_state("cam-2") == ("zone-a", {"order": [2]})
    assert db.is_seen("gw-1", "cam-1", 3) and db.is_seen("gw-1", "cam-2", 2)
    assert not db.is_seen("gw-1", "cam-2", 1)                   # the failed one left no trace
    counters = db.counters()
    assert counters["cam-1"]["messages"] == 3 and counters["cam-1"]["raised"] == 1
    assert counters["cam-2"]["messages"] == 1 and counters["cam-1"]["last_time"] == 103.0
    assert [a.row for a in db.alerts()] == [s.row for s in a2]
    again = db.apply_batch([d("cam-2", 1, c2(1))])[0]          # redelivered: handled normally now
    assert again[0] == {"order": [2, 1]}
    assert db.apply_batch([]) == []


def test_a_database_error_undoes_the_whole_batch(make_db):
    db = make_db()
    c1 = chain("cam-1", every=1)

    def bad_alert(old):   # level NULL: refused by the alerts table (NOT NULL), at commit time or before
        return {"order": []}, [AlertEvent("x", "cam-2", None, "crowd", "raised", None, 1.0, 1.0, {"event_no": 1})]
    with pytest.raises(Exception):
        db.apply_batch([d("cam-1", 1, c1(1)), d("cam-2", 1, bad_alert), d("cam-1", 2, c1(2))])
    assert not db.is_seen("gw-1", "cam-1", 1) and db.counters() == {} and db.alerts() == []
    assert db.camera_state("cam-1") is None
    out = db.apply_batch([d("cam-1", 1, c1(1)), d("cam-1", 2, c1(2))])   # the connection is usable
    assert [o[0] for o in out] == [{"order": [1]}, {"order": [1, 2]}]


def test_two_replicas_interleaving_overlapping_batches_apply_each_result_once_as_one_replica(make_db, caplog):
    """Replicas a and b each apply every result of 6 cameras (so each result reaches both, as a
    redelivery race would), in batches of 1..9 in different orders, with a slow decide. Each
    result must be applied exactly once, and per camera the alerts must be those one replica
    raises deciding the results in the order they were applied (the state's order list)."""
    caplog.set_level(logging.WARNING, logger="backend_decryptor.storage")
    cameras = [f"cam-{i}" for i in range(6)]
    makers = {c: chain(c, every=3, slow=0.001) for c in cameras}
    keys = [(c, seq) for seq in range(20) for c in cameras]
    applied: dict[str, list] = {"a": [], "b": []}
    errors = []

    dbs = {name: make_db(f"backend-{name}") for name in applied}
    start = threading.Barrier(2)

    def replica(name: str, order: list):
        db, rng = dbs[name], random.Random(name)
        start.wait(30)
        try:
            i = 0
            while i < len(order):
                n = rng.randint(1, 9)
                part = order[i:i + n]
                i += n
                out = db.apply_batch([d(c, s, makers[c](s)) for c, s in part])
                applied[name] += [key for key, o in zip(part, out) if o is not None]
                assert not any(isinstance(o, Exception) for o in out), out
                time.sleep(0.003)   # as a replica waits for its next decrypted results
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
    rev = list(reversed(keys))   # b sees every camera's results late-first: overlapping, other order
    threads = [threading.Thread(target=replica, args=("a", keys)), threading.Thread(target=replica, args=("b", rev))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors, errors
    assert sorted(applied["a"] + applied["b"]) == sorted(keys)      # each exactly once: none lost, none twice
    assert applied["a"] and applied["b"], "one replica applied everything: the test raced nothing"
    db = make_db("reader")
    by_camera = {c: [a.event for a in sorted(db.alerts(camera=c), key=lambda a: a.row)] for c in cameras}
    for c in cameras:
        order = db.camera_state(c)[1]["order"]
        assert sorted(order) == list(range(20))
        expected = [(f"{c}-{n}", order[n - 1]) for n in range(3, 21, 3)]    # one replica, in this order
        assert [(e.id, e.meta["sequence"]) for e in by_camera[c]] == expected
        assert db.counters()[c]["messages"] == 20 and db.counters()[c]["raised"] == len(expected)
    assert not [r for r in caplog.records if "running it again" in r.getMessage()], "a deadlock was retried"


def test_a_deadlock_with_another_transaction_runs_the_batch_again(postgres_server, caplog):
    """PostgreSQL: another client locks cam-2 and then cam-1 while the batch holds cam-1 and waits
    for cam-2 - a deadlock; the server aborts the batch (it waited first), which runs again and
    commits once the other is done."""
    from backend_decryptor.config import BackendConfig
    from backend_decryptor.storage import open_storage
    name = postgres_server.fresh_database()
    db = open_storage(BackendConfig.model_validate({"database": postgres_server.database_config(name)}),
                      replica="backend-dl")
    caplog.set_level(logging.WARNING, logger="backend_decryptor.storage")
    try:
        makers = {c: chain(c) for c in ("cam-1", "cam-2")}
        db.apply_batch([d("cam-1", 0, makers["cam-1"](0)), d("cam-2", 0, makers["cam-2"](0))])   # rows exist
        out = []
        with postgres_server.connect(name) as other:
            other.execute("SET deadlock_timeout = '5s'")      # the batch's backend detects it first
            other.execute("BEGIN")
            other.execute("SELECT 1 FROM camera_state WHERE camera='cam-2' FOR UPDATE")
            batch = threading.Thread(target=lambda: out.append(db.apply_batch(
                [d("cam-1", 1, makers["cam-1"](1)), d("cam-2", 1, makers["cam-2"](1))])))
            batch.start()
            deadline = time.monotonic() + 20
            while not other.execute("SELECT 1 FROM pg_locks WHERE NOT granted").fetchone():
                assert time.monotonic() < deadline, "the batch never waited for cam-2"
                time.sleep(0.05)
            other.execute("SELECT 1 FROM camera_state WHERE camera='cam-1' FOR UPDATE")   # the cycle
            other.execute("COMMIT")
            batch.join(30)
        [[a, b]] = out
        assert a[0] == {"order": [0, 1]} and b[0] == {"order": [0, 1]}
        assert [r for r in caplog.records if "DeadlockDetected" in r.getMessage()]
        assert db.counters()["cam-1"]["messages"] == 2 and db.counters()["cam-2"]["messages"] == 2
    finally:
        db.close()
