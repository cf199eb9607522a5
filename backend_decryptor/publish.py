"""What leaves the backend: alert events, retained per-camera state, Home Assistant discovery.

Only coarse labels, alert ids, times and drop reason counts are published (see
alerts.public_state / alert_json, drops.py); decrypted values never are. Alerts are QoS 1 and
tracked as an outbox: `poll()` reports the history rows whose message the broker acknowledged,
so the history can mark them published.

A camera whose results are being dropped (after the checks: implausible output, decryption
failure, ...) gets its state republished with the `dropped` summary - at once when a new reason
appears, then at most every DROP_REPUBLISH_S - so an operator sees why it went quiet.
"""
from __future__ import annotations

import json
import logging
import math
from typing import Callable

from backend_decryptor.alerts import alert_json
from backend_decryptor.config import HomeAssistantConfig
from backend_decryptor.drops import VISIBLE, DropWindow
from backend_decryptor.storage.base import StoredAlert
from service_common.topics import OFFLINE, ONLINE, Topics
from service_common.transport import Transport

log = logging.getLogger(__name__)
DROP_REPUBLISH_S = 10.0
_OBJECT_PREFIX = "fhe_edge_"


def ha_object_id(camera: str) -> str:
    """Home Assistant object id of a camera: unique and reversible (camera_of_object_id). HA allows
    [A-Za-z0-9_-]; camera ids also use '.', so '_' and '.' are escaped as _5f and _2e (mapping
    both to '_' made cam.1 and cam_1 share, and overwrite, one discovery config)."""
    return _OBJECT_PREFIX + "".join(ch if ch.isascii() and (ch.isalnum() or ch == "-") else f"_{ord(ch):02x}"
                                    for ch in camera)


def camera_of_object_id(object_id: str) -> str:
    if not object_id.startswith(_OBJECT_PREFIX):
        raise ValueError(f"{object_id!r} is not an fhe-edge object id")
    body, out, i = object_id[len(_OBJECT_PREFIX):], [], 0
    while i < len(body):
        if body[i] == "_":
            out.append(chr(int(body[i + 1:i + 3], 16)))
            i += 3
        else:
            out.append(body[i])
            i += 1
    return "".join(out)


class Publisher:
    def __init__(self, transport: Transport, prefix: str, home_assistant: HomeAssistantConfig,
                 state_interval: float = 0.0, drops: DropWindow | None = None, clock=None):
        """Publishes through `transport` (the service's; MqttLink or MemoryTransport)."""
        self.transport = transport
        self.topics = Topics(prefix)
        self.ha = home_assistant
        self.state_interval = state_interval
        self.drops = drops or DropWindow()
        self.clock = clock or self.drops.clock
        self._announced: dict[str, str | None] = {}   # camera -> gateway its discovery names
        self._pending: list[tuple[object, StoredAlert]] = []  # (MQTTMessageInfo or None: to publish again, alert)
        self._last_state: dict[str, dict] = {}        # camera -> last public state (without `dropped`)
        self._gateway: dict[str, str] = {}            # camera -> gateway it was last seen from
        self._drop_published: dict[str, tuple[float, frozenset]] = {}

    def alert_topic(self, camera: str) -> str:
        return self.topics.alerts(camera)

    def state_topic(self, camera: str) -> str:
        return self.topics.state(camera)

    def alert(self, stored: StoredAlert) -> None:
        info = self.transport.publish(self.alert_topic(stored.event.camera), json.dumps(alert_json(stored.event)), qos=1)
        self._pending.append((info, stored))

    def state(self, camera: str, state: dict, gateway: str | None = None) -> None:
        """Publish the retained state (with the camera's current `dropped` summary)."""
        if gateway:
            self._gateway[camera] = gateway
        self._last_state[camera] = state
        if self.ha.enabled and self._announced.get(camera, "") != self._gateway.get(camera):
            self._discovery(camera)   # first time, or the camera now comes through another gateway
        self.transport.publish(self.state_topic(camera), json.dumps({**state, "dropped": self.drops.summary(camera)}),
                              qos=1, retain=True)

    def dropped(self, camera: str, reason: str, current_state: Callable[[], dict],
                gateway: str | None = None) -> None:
        """A result of `camera` (which passed the checks) was dropped for `reason`: count it, and
        republish the camera's state when the operator has not been told yet."""
        if reason not in VISIBLE:
            return
        self.drops.record(camera, reason)
        reasons = frozenset(self.drops.summary(camera)["reasons"])
        now = self.clock()
        last = self._drop_published.get(camera)
        if last is not None and reasons <= last[1] and now - last[0] < DROP_REPUBLISH_S:
            return
        self._drop_published[camera] = (now, reasons)
        state = self._last_state.get(camera) or current_state()
        self.state(camera, state, gateway)

    def poll(self) -> list[int]:
        """History rows of alerts the broker has acknowledged since the last call. An alert whose
        publication failed (the client was not connected: paho says so by raising) is published
        again once connected - never given up (its outbox row stays unpublished meanwhile)."""
        done, pending = [], []
        for info, stored in self._pending:
            try:
                if info is not None and info.is_published():
                    done.append(stored.row)
                    continue
            except (RuntimeError, ValueError):
                info = None
            if info is None and self.transport.connected.is_set():
                info = self.transport.publish(self.alert_topic(stored.event.camera),
                                              json.dumps(alert_json(stored.event)), qos=1)
            pending.append((info, stored))
        self._pending = pending
        return done

    def _availability(self, camera: str) -> dict:
        """Unavailable in Home Assistant while the camera's stream or its gateway is down (the
        gateway's retained status and availability topics), or when the state has not been
        refreshed for 3 state intervals (the backend is down, or nothing arrives)."""
        extra: dict = {}
        gateway = self._gateway.get(camera)
        if gateway:
            extra["availability"] = [{"topic": self.topics.status(gateway, camera)},
                                     {"topic": self.topics.gateway_availability(gateway)}]
            extra.update(availability_mode="all", payload_available=ONLINE, payload_not_available=OFFLINE)
        if self.state_interval > 0:
            extra["expire_after"] = math.ceil(3 * self.state_interval)
        return extra

    def _discovery(self, camera: str) -> None:
        """Home Assistant MQTT discovery: a crowd-level sensor, a dropped-results sensor and three
        problem binary sensors per camera, all reading the retained state topic."""
        obj = ha_object_id(camera)
        device = {"identifiers": [obj], "name": f"Camera {camera}", "manufacturer": "fhe-edge"}
        base = {"state_topic": self.state_topic(camera), "device": device, **self._availability(camera)}
        entities = {
            ("sensor", "crowd_level"): {"name": "Crowd level", "value_template": "{{ value_json.crowd.level }}",
                                        "icon": "mdi:account-group"},
            ("binary_sensor", "crowd_alert"): {
                "name": "Crowd alert", "device_class": "problem",
                "value_template": "{{ 'ON' if value_json.crowd.alert else 'OFF' }}"},
            ("binary_sensor", "incident"): {
                "name": "Incident", "device_class": "problem",
                "value_template": "{{ 'ON' if value_json.incident.active else 'OFF' }}"},
            ("sensor", "dropped"): {
                "name": "Dropped results", "icon": "mdi:alert-circle-outline",
                "value_template": "{{ value_json.dropped.count if value_json.dropped is defined else 0 }}",
                "json_attributes_topic": self.state_topic(camera),
                "json_attributes_template": "{{ (value_json.dropped.reasons if value_json.dropped is defined "
                                            "else {}) | tojson }}"},
            ("binary_sensor", "results_dropped"): {
                "name": "Results dropped", "device_class": "problem",
                "value_template": "{{ 'ON' if value_json.dropped is defined and value_json.dropped.count > 0 "
                                  "else 'OFF' }}"},
        }
        for (component, key), spec in entities.items():
            payload = {**base, **spec, "unique_id": f"{obj}_{key}", "object_id": f"{obj}_{key}"}
            topic = Topics.home_assistant_config(self.ha.discovery_prefix, component, obj, key)
            self.transport.publish(topic, json.dumps(payload), qos=1, retain=True)
        self._announced[camera] = self._gateway.get(camera)
