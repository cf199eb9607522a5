"""Health: systemd notifications and the periodic stats message (the metrics: edge_agent/metrics.py).

sd_notify and watchdog_interval are the shared ones (service_common.notify).
Outside systemd NOTIFY_SOCKET is unset and every notification is a no-op.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from typing import Callable

from edge_agent.metrics import Metrics

from service_common.notify import sd_notify, watchdog_interval  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)


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
