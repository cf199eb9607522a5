"""A second backend replica on the broker is visible (issue 16: one started once with another
client id silently took half the stream for an hour, then raised a duplicate alert)."""
from __future__ import annotations

import logging

from backend_decryptor.config import MQTTConfig
from backend_decryptor.metrics import Metrics
from backend_decryptor.receiver import Receiver, mqtt_link
from tests.support.process import eventually


def receiver(broker, client_id, metrics=None, prefix="fhe-edge"):
    cfg = MQTTConfig(host=broker.host, port=broker.port, client_id=client_id, topic_prefix=prefix)
    r = Receiver(mqtt_link(cfg), cfg, on_message=lambda *a: None, on_peers=metrics.set_peers if metrics else None)
    r.transport.start()
    assert r.wait_connected(10)
    return r


def test_a_second_replica_is_logged_and_counted_online_then_offline(broker, caplog):
    caplog.set_level(logging.WARNING, logger="backend_decryptor.receiver")
    metrics = Metrics()
    first = receiver(broker, "backend-a", metrics)
    try:
        assert first.peers == {}
        second = receiver(broker, "backend-b")
        assert eventually(lambda: first.peers.get("backend-b") == "online")
        assert metrics.registry.get_sample_value("backend_peer_replicas", {"state": "online"}) == 1
        assert any("backend-b" in r.getMessage() and "online" in r.getMessage() for r in caplog.records)
        second.transport.stop()
        assert eventually(lambda: first.peers.get("backend-b") == "offline")
        assert metrics.registry.get_sample_value("backend_peer_replicas", {"state": "online"}) == 0
        assert metrics.registry.get_sample_value("backend_peer_replicas", {"state": "offline"}) == 1
        assert any("session_expiry" in r.getMessage() for r in caplog.records)
        # The replica's own availability is not a peer, and the retained words of a stopped
        # replica are seen by one that starts later.
        third = receiver(broker, "backend-c")
        try:
            assert eventually(lambda: third.peers == {"backend-a": "online", "backend-b": "offline"})
        finally:
            third.transport.stop()
    finally:
        first.transport.stop()


def test_peer_messages_never_reach_the_inference_pipeline(broker):
    seen = []
    cfg = MQTTConfig(host=broker.host, port=broker.port, client_id="backend-a")
    r = Receiver(mqtt_link(cfg), cfg, on_message=lambda topic, *a: seen.append(topic))
    r.transport.start()
    try:
        assert r.wait_connected(10)
        other = receiver(broker, "backend-b")
        other.transport.stop()
        assert eventually(lambda: r.peers.get("backend-b") == "offline")
        assert seen == []
    finally:
        r.transport.stop()


def test_the_peer_table_is_bounded(broker, monkeypatch):
    """Whoever can write availability topics cannot grow the replica's memory without bound."""
    import backend_decryptor.receiver as receiver_module
    monkeypatch.setattr(receiver_module, "MAX_PEERS", 3)
    r = receiver(broker, "backend-a")
    try:
        for i in range(6):
            r._on_peer_availability(f"fhe-edge/backend/fake-{i}/availability", b"online")
        assert len(r.peers) == 3
        r._on_peer_availability("fhe-edge/backend/fake-0/availability", b"offline")
        assert r.peers["fake-0"] == "offline"       # known peers still update
    finally:
        r.transport.stop()
