"""Health: systemd notifications, Prometheus metrics, the periodic stats message.

sd_notify and watchdog_interval are the shared ones (service_common.notify).
Outside systemd NOTIFY_SOCKET is unset and every notification is a no-op.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from service_common.notify import sd_notify, watchdog_interval  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """Every metric the gateway exports, on its own registry (several daemons in one test process
    would collide on the global one)."""

    def __init__(self):
        r = self.registry = CollectorRegistry()
        p = "edge_agent_"
        self.frames_captured = Counter(p + "frames_captured", "Frames read from the camera stream", ["camera"], registry=r)
        self.frames_sampled = Counter(p + "frames_sampled", "Frames taken for inference (max_fps)", ["camera"], registry=r)
        self.frames_dropped = Counter(p + "frames_dropped", "Frames not inferred, by reason", ["camera", "reason"], registry=r)
        self.results = Counter(p + "results", "Encrypted results handed to the publisher", ["camera"], registry=r)
        self.queue_depth = Gauge(p + "queue_depth", "Frames waiting for a worker", registry=r)
        self.stage_seconds = Histogram(p + "stage_seconds", "Latency per pipeline stage", ["stage"],
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.publish_failures = Counter(p + "publish_failures", "Failed publishes/connects, by reason", ["reason"], registry=r)
        self.spool_messages = Gauge(p + "spool_messages", "Results waiting in the on-disk spool", registry=r)
        self.spool_bytes = Gauge(p + "spool_bytes", "Bytes in the on-disk spool", registry=r)
        self.spool_evictions = Gauge(p + "spool_evictions", "Results evicted from the full spool since start", registry=r)
        self.worker_restarts = Counter(p + "worker_restarts", "Worker processes that died and were replaced", registry=r)
        self.workers_ready = Gauge(p + "workers_ready", "Worker processes with the model loaded", registry=r)
        self.bundle_loads = Counter(p + "bundle_loads", "Bundle load attempts, by result", ["result"], registry=r)
        self.bundle_refused = Counter(p + "bundle_refused", "Bundles refused, by reason (invalid, rollback, "
                                      "model_mismatch, input_spec, error)", ["reason"], registry=r)
        self.bundle_version = Gauge(p + "bundle_version", "Version of the running bundle", registry=r)
        self.camera_online = Gauge(p + "camera_online", "1 if the camera stream is up", ["camera"], registry=r)
        self.mqtt_connected = Gauge(p + "mqtt_connected", "1 while connected to the broker", registry=r)

    def serve(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        start_http_server(int(port), addr=host or "0.0.0.0", registry=self.registry)
        log.info("metrics on http://%s:%s/metrics", host or "0.0.0.0", port)

    def total(self, counter: Counter) -> float:
        """Sum of a counter over all its labels (for the stats message)."""
        return sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total"))


class HealthReporter:
    """A thread that pings the systemd watchdog while `alive()` holds, updates STATUS= and
    publishes the stats JSON every `stats_interval` seconds."""

    def __init__(self, metrics: Metrics, stats: Callable[[], dict], alive: Callable[[], bool],
                 publish_stats: Callable[[str], None], stats_interval: float):
        self.metrics = metrics
        self.stats = stats
        self.alive = alive
        self.publish_stats = publish_stats
        self.stats_interval = stats_interval
        self.tick = min(filter(None, [watchdog_interval(), 2.0]))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health", daemon=True)
        self._last_frames = 0.0
        self._last_time = time.monotonic()

    def start(self) -> "HealthReporter":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def _run(self) -> None:
        next_stats = time.monotonic() + min(5.0, self.stats_interval)
        while not self._stop.wait(self.tick):
            try:
                snapshot = self.stats()
                if self.alive():
                    # A stuck pool or publisher stops the pings and systemd restarts us.
                    sd_notify("WATCHDOG=1")
                sd_notify(f"STATUS={snapshot['fps']:.2f} fps, queue {snapshot['queue_depth']}, "
                          f"spool {snapshot['spool_messages']}, cameras online "
                          f"{snapshot['cameras_online']}/{snapshot['cameras']}")
                if time.monotonic() >= next_stats:
                    next_stats = time.monotonic() + self.stats_interval
                    self.publish_stats(json.dumps(snapshot, sort_keys=True))
            except Exception:
                log.exception("health reporter error")

    def fps(self, results_total: float) -> float:
        """Results per second since the previous call."""
        now = time.monotonic()
        rate = (results_total - self._last_frames) / max(1e-6, now - self._last_time)
        self._last_frames, self._last_time = results_total, now
        return rate
