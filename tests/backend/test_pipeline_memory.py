"""The backend pipeline's checks and rules through the transport interface, WITHOUT a broker
(issue 12): the Service is handed a MemoryTransport, messages are delivered to it as the broker
would, and what it publishes and acknowledges is read back. The same pipeline over a real
Mosquitto is tested in tests/backend/ (test_service.py, test_checks.py, test_e2e.py).

PLUMBING test: the decryptor is the IdentityCodec stand-in (payload = float64 vector, NOT
encryption); real SQLite state."""
from __future__ import annotations

import json
import time
from types import SimpleNamespace

from backend_decryptor.service import Service
from service_common.topics import OFFLINE, ONLINE, Topics
from service_common.transport import MemoryTransport

from tests.support.backend import CountingCodec, IdentityCodec, catalog, config, handled, message, rules, wait_for

NO_BROKER = SimpleNamespace(host="127.0.0.1", port=1)     # nothing listens: nothing may try to connect
TOPICS = Topics("fhe-edge")


def service(tmp_path, decryptor=None, **over) -> tuple[Service, MemoryTransport]:
    transport = MemoryTransport(TOPICS.backend_availability("backend-1"))
    svc = Service(config(tmp_path, NO_BROKER, **over), rules(), catalog=catalog(),
                  decryptor=decryptor or IdentityCodec(), transport=transport).start(connect_timeout=1)
    return svc, transport


def alerts(transport: MemoryTransport) -> list[dict]:
    return [json.loads(m.payload) for m in transport.sent(TOPICS.alerts(""))]


def test_checks_reject_each_bad_message_with_its_reason_and_every_message_is_acknowledged(tmp_path):
    CountingCodec.calls = 0
    svc, transport = service(tmp_path, CountingCodec(), checks={"allowed_gateways": ["gw-1", "gw-2"]})
    try:
        now = time.time()
        topic, good = message(1)
        bad = [("bad_magic", (topic, b"GARBAGE" * 10)), ("truncated", (topic, good[:20])),
               ("replayed", message(1)), ("unknown_model", message(101, model="other-model")),
               ("gateway_not_allowed", message(103, gateway="gw-evil")), ("clock_skew", message(104, t=now - 3600)),
               ("topic_mismatch", (TOPICS.infer("gw-2", "cam-1"), message(106)[1])),
               ("unsigned", message(107, signer=False)), ("decrypt_failed", message(108, payload=b"abc"))]
        mids = [transport.inject(*message(1))]
        for _, (t, data) in bad:
            mids.append(transport.inject(t, data))
        wait_for(lambda: handled(svc) >= len(mids), what="every message handled")
        m = svc.metrics
        assert m.value("backend_messages_processed") == 1
        for reason, _ in bad:
            assert m.value("backend_messages_rejected", reason=reason) == 1, reason
        assert svc.db.rejections() == {reason: 1 for reason, _ in bad}
        results = lambda: [mid for mid in transport.acked if mid in mids]   # noqa: E731 (not its own availability)
        wait_for(lambda: len(results()) == len(mids), what="acknowledgements")
        assert results() == mids                  # all, once each, in arrival order (QoS 1 order)
        assert CountingCodec.calls == 2           # the valid message and the one that fails decryption
    finally:
        svc.stop()


def test_rules_raise_once_and_clear_and_the_alerts_and_state_go_out_on_the_transport(tmp_path):
    svc, transport = service(tmp_path)
    try:
        counts = [15.0, 15.0, 15.0, 1.0, 1.0, 1.0]       # consecutive 2, threshold 10, hysteresis 2
        for seq, count in enumerate(counts):
            transport.inject(*message(seq, count=count, camera="cam-3"))
        wait_for(lambda: handled(svc) >= len(counts), what="messages handled")
        wait_for(lambda: len(alerts(transport)) >= 2, what="alerts published")
        assert [(a["type"], a["event"]) for a in alerts(transport)] == [("crowd", "raised"), ("crowd", "cleared")]
        assert [m.topic for m in transport.sent(TOPICS.alerts(""))] == [TOPICS.alerts("cam-3")] * 2
        state = json.loads(transport.retained[TOPICS.state("cam-3")])
        assert state["crowd"]["alert"] is None and state["crowd"]["level"] == "low"
        assert b"15.0" not in b"".join(m.payload for m in transport.published)   # no decrypted value leaves
        wait_for(lambda: svc.db.alerts() and all(a.published for a in svc.db.alerts()), what="outbox marked")
    finally:
        svc.stop()
    # the service says online at start and offline at stop on its own availability topic
    words = [m.payload for m in transport.sent(TOPICS.backend_availability("backend-1"))]
    assert words == [ONLINE.encode(), OFFLINE.encode()]


def test_another_replica_is_noticed_and_its_words_never_reach_the_pipeline(tmp_path):
    svc, transport = service(tmp_path)
    try:
        mid = transport.inject(TOPICS.backend_availability("backend-2"), ONLINE.encode())
        assert svc.receiver.peers == {"backend-2": ONLINE} and mid in transport.acked
        assert svc.metrics.registry.get_sample_value("backend_peer_replicas", {"state": "online"}) == 1
        assert svc.metrics.value("backend_messages_received") == 0
    finally:
        svc.stop()
