"""What the demo watches, as an owner's dashboard would: the backend's alert and state topics, the
gateway's availability/stats, and both services' Prometheus counters for the progress line.

Nothing here can see a decrypted value: the state topic carries the coarse crowd band and whether
an incident alert is active, the alert topic the alert events (docs/backend.md, "MQTT topics").
"""
from __future__ import annotations

import json
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from service_common.topics import ONLINE, Topics


def scrape(port: int, names: tuple[str, ...]) -> dict[str, float] | None:
    """Sum of each named metric over its labels from a Prometheus endpoint; None if unreachable."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    totals = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        key, value = line.rsplit(" ", 1)
        name = key.split("{", 1)[0]
        if name in totals:
            try:
                totals[name] += float(value)
            except ValueError:
                pass
    return totals


@dataclass
class Observed:
    """Everything received, with the time it arrived (for the plot and the final summary)."""
    states: list[dict] = field(default_factory=list)    # state JSON of every state message
    alerts: list[dict] = field(default_factory=list)    # alert JSON, de-duplicated on (id, event)
    malformed: int = 0


class Monitor:
    def __init__(self, port: int, prefix: str, camera: str, on_alert=None):
        self.prefix, self.camera = prefix, camera
        # The topics the services publish, from the one grammar they use (service_common.topics):
        # kind -> (filter, QoS). Results are counted only (QoS 0: without the key they are noise).
        t = Topics(prefix)
        self.filters = {"alerts": (t.alerts("+"), 1), "state": (t.state("+"), 1),
                        "status": (t.status("+", camera), 1), "infer": (t.infer("+", "+"), 0)}
        self.observed = Observed()
        self.on_alert = on_alert or (lambda alert: None)
        self._seen_alerts: set[tuple[str, ...]] = set()
        self._lock = threading.Lock()
        self.camera_status: str | None = None
        self.encrypted_results = 0     # ciphertext envelopes seen on the infer topic (opaque here)
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="demo-monitor", protocol=mqtt.MQTTv5)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        client.subscribe(list(self.filters.values()))

    def kind_of(self, topic: str) -> str | None:
        return next((k for k, (f, _) in self.filters.items() if mqtt.topic_matches_sub(f, topic)), None)

    def _on_message(self, client, userdata, msg):
        kind = self.kind_of(msg.topic)
        if kind == "infer":
            self.encrypted_results += 1        # counted only: without the secret key it is noise
            return
        if kind == "status":
            self.camera_status = msg.payload.decode(errors="replace")
            return
        if kind is None:
            return
        try:
            data = json.loads(msg.payload)
            if not isinstance(data, dict):
                raise ValueError("not an object")
        except ValueError:
            self.observed.malformed += 1
            return
        data["received"] = time.time()
        if kind == "state":
            with self._lock:
                self.observed.states.append(data)
        else:                                   # alerts
            # Alerts are at-least-once: drop exact redeliveries. (id, event) alone would also drop
            # the second "updated" of one alert, which is a new event with another level/time.
            key = (str(data.get("id")), str(data.get("event")), str(data.get("level")), str(data.get("time")))
            with self._lock:
                if key in self._seen_alerts:
                    return
                self._seen_alerts.add(key)
                self.observed.alerts.append(data)
            self.on_alert(data)

    def wait_camera_online(self, timeout: float, check=lambda: None) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            check()
            if self.camera_status == ONLINE:
                return True
            time.sleep(0.1)
        return False

    def raised(self, kind: str) -> int:
        with self._lock:
            return sum(1 for a in self.observed.alerts if a.get("type") == kind and a.get("event") == "raised")

    def last_level(self) -> str:
        with self._lock:
            return (self.observed.states[-1].get("crowd") or {}).get("level") or "-" if self.observed.states else "-"

    def close(self) -> None:
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()


GATEWAY_METRICS = ("edge_agent_frames_sampled_total", "edge_agent_results_total",
                   "edge_agent_frames_dropped_total")
BACKEND_METRICS = ("backend_messages_processed_total", "backend_messages_rejected_total")


class Progress:
    """One progress line, rewritten in place on a terminal (a line every 10 s otherwise)."""

    def __init__(self, stream=sys.stdout):
        self.stream = stream
        self.tty = stream.isatty()
        self._last_print = 0.0
        self._shown = False
        self._lock = threading.Lock()       # alerts arrive on the MQTT thread
        self.gateway: dict[str, float] = dict.fromkeys(GATEWAY_METRICS, 0.0)
        self.backend: dict[str, float] = dict.fromkeys(BACKEND_METRICS, 0.0)

    def update(self, gateway_port: int, backend_port: int) -> None:
        self.gateway = scrape(gateway_port, GATEWAY_METRICS) or self.gateway
        self.backend = scrape(backend_port, BACKEND_METRICS) or self.backend

    def line(self, elapsed: float, total: float, monitor: Monitor) -> str:
        g, b = self.gateway, self.backend
        encrypted = max(g["edge_agent_results_total"], monitor.encrypted_results)
        return (f"[{min(elapsed, total):5.0f}/{total:.0f} s] frames encrypted {encrypted:.0f} "
                f"(dropped {g['edge_agent_frames_dropped_total']:.0f}) | results decrypted "
                f"{b['backend_messages_processed_total']:.0f} | alerts raised: crowd {monitor.raised('crowd')}, "
                f"incident {monitor.raised('incident')} | crowd band {monitor.last_level()}")

    def show(self, text: str, force: bool = False) -> None:
        with self._lock:
            self._show(text, force)

    def _show(self, text: str, force: bool) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()
            self._shown = True
        elif force or time.monotonic() - self._last_print >= 10:
            self._last_print = time.monotonic()
            print(text, file=self.stream, flush=True)

    def message(self, text: str) -> None:
        """A line of its own (an alert), above the progress line."""
        with self._lock:
            if self.tty and self._shown:
                self.stream.write("\r\033[K")
            print(text, file=self.stream, flush=True)

    def end(self) -> None:
        if self.tty and self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False
