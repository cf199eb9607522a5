"""A replica dying inside group commit loses nothing and doubles nothing (SQLite and PostgreSQL,
real Mosquitto, the replica in its own process):
- before the commit (inside the batch's transaction): none of the batch is stored; the broker
  redelivers every message of it to the restarted replica, which handles each once;
- after the commit, before any acknowledgement: the redeliveries are refused as replays.
Either way each result is counted once and the alerts per camera are those of one uninterrupted
replica. After the commit the batch's alerts are in the outbox unpublished: the restarted replica
publishes them once its connection is up (publishing them before used to kill its decision
thread: paho raises for a message sent while not connected).
PLUMBING: IdentityCodec instead of CKKS (tests/support/replica.py)."""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time

import pytest

from backend_decryptor.config import BackendConfig
from backend_decryptor.storage import open_storage
from tests.support.replicas import CAMERAS, ROOT, Replica, one_replica, readings, shape, spec
from tests.support.backend import MQTTTestClient, message
from tests.support.pipeline import until

ROUNDS = 8
TOTAL = ROUNDS * len(CAMERAS)


def crashing_replica(mode: str, keys_path, spec_path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.crashing_replica", mode, "4", str(keys_path),
                             str(spec_path)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    ready, _, _ = select.select([proc.stdout], [], [], 90)
    line = proc.stdout.readline() if ready else ""
    if line.strip() != "ready":
        proc.kill()
        raise AssertionError(f"replica did not start: {line!r} {proc.stderr.read()[-3000:]}")
    return proc


class State:
    """A reader of the replicas' state (either storage)."""

    def __init__(self, database: dict):
        self.db = open_storage(BackendConfig.model_validate({"database": database}), replica="test-reader")

    def processed(self) -> int:
        return sum(c["messages"] for c in self.db.counters().values())

    def shapes(self) -> dict[str, list]:
        rows = sorted(self.db.alerts(), key=lambda a: a.row)
        return {cam: shape([a.event for a in rows if a.event.camera == cam]) for _, cam in CAMERAS}


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    batching = {"batch_max": 8, "batch_wait": 0.05}
    if request.param == "sqlite":
        return {"url": str(tmp_path / "state.db"), **batching}
    pg = request.getfixturevalue("postgres_server")
    return pg.database_config(pg.fresh_database(), **batching)


@pytest.mark.parametrize("mode", ["before", "after"])
def test_a_replica_dying_in_a_batch_loses_nothing_and_doubles_nothing(tmp_path, broker, database, mode):
    spec_path = spec(tmp_path, broker, database, "backend-crash", limits={"per_gateway_rate": None})
    keys_path = tmp_path / "batch.json"
    proc = crashing_replica(mode, keys_path, spec_path)
    pub = MQTTTestClient(broker)
    state = State(database)
    replica = None
    try:
        t0 = time.time() - 60
        inputs = readings(ROUNDS)
        for r in range(ROUNDS):          # all at once: batches form behind each commit
            for gw, cam in CAMERAS:
                count, logit = inputs[cam][r]
                pub.publish(*message(r, count, logit, gateway=gw, camera=cam, t=t0 + r))
        assert proc.wait(60) == 3, proc.stderr.read()[-3000:]
        batch = [tuple(k) for k in json.loads(keys_path.read_text())]
        assert len(batch) >= 4
        committed = [state.db.is_seen(*k) for k in batch]
        assert committed == [mode == "after"] * len(batch)   # all or nothing of the batch
        assert state.processed() < TOTAL
        replica = Replica(spec_path)    # the same client id: its session's messages are redelivered
        until(lambda: state.processed() >= TOTAL, 60,
              lambda: f"every result handled: {state.processed()} of {TOTAL}, {state.db.rejections()}")
        time.sleep(1.5)                 # anything handled twice would show now
        assert state.processed() == TOTAL
        assert all(state.db.is_seen(*k) for k in batch)
        rejections = state.db.rejections()
        assert set(rejections) <= {"replayed"}, rejections
        if mode == "after":             # the committed batch came again and was refused
            assert rejections.get("replayed", 0) >= len(batch)
        assert state.shapes() == one_replica(inputs, t0)
    finally:
        pub.close()
        if proc.poll() is None:
            proc.kill()
        log = replica.stop() if replica else ""
        state.db.close()
    assert "Traceback" not in log, log
