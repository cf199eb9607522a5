"""Prometheus metrics of one service instance (its own registry, so replicas in one test process
do not collide). Rejections carry the reason as a label (see checks.REASONS)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from service_common.topics import OFFLINE, ONLINE


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter("backend_messages_received", "inference messages delivered by the broker", registry=r)
        self.rejected = Counter("backend_messages_rejected", "messages dropped, by reason", ["reason"], registry=r)
        self.processed = Counter("backend_messages_processed", "messages decrypted and decided", registry=r)
        self.alerts = Counter("backend_alert_events", "alert events, by type and lifecycle event",
                              ["type", "event"], registry=r)
        self.decrypt_seconds = Histogram("backend_decrypt_seconds", "time from receipt to decrypted result",
                                         buckets=(.01, .05, .1, .25, .5, 1, 2, 5, 10, 30), registry=r)
        self.peer_replicas = Gauge("backend_peer_replicas", "other backend replicas seen on the broker, by their "
                                   "last availability word", ["state"], registry=r)
        self.in_flight = Gauge("backend_messages_in_flight", "messages received and not yet acknowledged", registry=r)

    def set_peers(self, peers: dict[str, str]) -> None:
        for state in {ONLINE, OFFLINE} | set(peers.values()):
            self.peer_replicas.labels(state=state).set(sum(1 for v in peers.values() if v == state))

    def value(self, name: str, **labels) -> float:
        """Current value of a counter (tests, CLI)."""
        return self.registry.get_sample_value(f"{name}_total", labels or None) or 0.0

    def serve(self, listen: str) -> None:
        host, port = listen.rsplit(":", 1)
        start_http_server(int(port), addr=host, registry=self.registry)
