"""Group commit in the pipeline, for SQLite and PostgreSQL: the results queued behind a slow
commit are decided together in ONE storage transaction, each message acknowledged only after
the commit that holds it and in arrival order; a message refused by a check, one that does not
decrypt and one whose decision fails (a rules bug) each cost only themselves, the others commit;
a camera's results in one batch are decided in order (the alerts of one-at-a-time handling).

PLUMBING test (MemoryTransport instead of a broker, the IdentityCodec instead of CKKS: what is
tested is batching and its storage); the crash/redelivery cases with a real broker are in
test_batch_crash.py."""
from __future__ import annotations

import json
import threading
from types import SimpleNamespace

import pytest

from backend_decryptor import alerts
from backend_decryptor.service import Service
from service_common.topics import Topics
from service_common.transport import MemoryTransport
from tests.support.backend import catalog, config, handled, message, rules, wait_for, IdentityCodec

NO_BROKER = SimpleNamespace(host="127.0.0.1", port=1)
TOPICS = Topics("fhe-edge")


class Recorder:
    """Wraps the service's storage and transport: the order of commits and acknowledgements, and
    the first batch held until `release` is set (so the next messages queue up behind it)."""

    def __init__(self, svc: Service, transport: MemoryTransport):
        self.events: list[tuple] = []
        self.release, self.held = threading.Event(), threading.Event()
        inner_apply, inner_ack = svc.db.apply_batch, transport.ack

        def apply_batch(decisions):
            if not self.release.is_set():
                self.held.set()
                self.release.wait(20)
            out = inner_apply(decisions)
            self.events.append(("commit", [x.sequence for x in decisions]))
            return out

        def ack(mid, qos):
            self.events.append(("ack", mid))
            inner_ack(mid, qos)
        svc.db.apply_batch = apply_batch
        svc.pipeline.db = svc.db
        svc.pipeline.ack = ack

    def batches(self) -> list[list[int]]:
        return [seqs for kind, seqs in self.events if kind == "commit"]


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request):
    if request.param == "sqlite":
        return {}
    pg = request.getfixturevalue("postgres_server")
    return {"database": pg.database_config(pg.fresh_database())}


def test_queued_results_commit_together_and_each_is_acknowledged_after_its_commit(tmp_path, database,
                                                                                   monkeypatch):
    step = alerts.step

    def buggy_step(rules_, state, reading, t, **kw):   # a rules bug hitting one camera only
        if reading.crowd_level == 66.0:
            raise RuntimeError("rules bug")
        return step(rules_, state, reading, t, **kw)
    monkeypatch.setattr(alerts, "step", buggy_step)
    transport = MemoryTransport(TOPICS.backend_availability("backend-1"))
    over = {"database": {**database.get("database", {}), "batch_max": 32, "batch_wait": 0.1}}
    svc = Service(config(tmp_path, NO_BROKER, checks={"allowed_gateways": ["gw-1"]}, **over), rules(),
                  catalog=catalog(), decryptor=IdentityCodec(), transport=transport).start(connect_timeout=1)
    rec = Recorder(svc, transport)
    try:
        first = transport.inject(*message(0, 15.0, camera="cam-1"))   # its commit is held: the rest queue up
        assert rec.held.wait(10)
        inputs = [message(1, 15.0, camera="cam-1"),                      # cam-1: 2nd high -> raised
                  message(2, 15.0, camera="cam-2"),
                  message(3, 1.0, gateway="gw-evil", camera="cam-2"),    # refused by a check
                  message(4, 66.0, camera="cam-3"),                      # its decision fails
                  message(5, 1.0, camera="cam-1"),                       # cam-1 again in the batch: cleared
                  message(6, camera="cam-2", payload=b"abc"),            # does not decrypt
                  message(7, 15.0, camera="cam-2")]                      # cam-2: 2nd high -> raised
        mids = [first] + [transport.inject(*m) for m in inputs]
        rec.release.set()
        wait_for(lambda: handled(svc) >= len(mids), what="every message handled")
        wait_for(lambda: len([m for m in transport.acked if m in mids]) == len(mids), what="acknowledgements")
        assert rec.batches() == [[0], [1, 2, 4, 5, 7]]   # the decidable ones of the queue, in one transaction
        acks = [x for kind, x in rec.events if kind == "ack" and x in mids]
        assert acks == mids                               # once each, in arrival order
        second_commit = rec.events.index(("commit", [1, 2, 4, 5, 7]))
        assert all(rec.events.index(("ack", m)) > second_commit for m in mids[1:]), rec.events
        assert rec.events.index(("ack", first)) < second_commit
        m = svc.metrics
        assert m.value("backend_messages_processed") == 5
        for reason in ("gateway_not_allowed", "internal_error", "decrypt_failed"):
            assert m.value("backend_messages_rejected", reason=reason) == 1, reason
        assert not svc.db.is_seen("gw-1", "cam-3", 4)     # the failed decision left nothing
        got = [(a["camera"], a["event"]) for a in
               (json.loads(x.payload) for x in transport.sent(TOPICS.alerts("")))]
        assert got == [("cam-1", "raised"), ("cam-1", "cleared"), ("cam-2", "raised")]
        counters = svc.db.counters()
        assert counters["cam-1"]["messages"] == 3 and counters["cam-2"]["messages"] == 2
        assert json.loads(transport.retained[TOPICS.state("cam-1")])["crowd"]["alert"] is None
    finally:
        svc.stop()
