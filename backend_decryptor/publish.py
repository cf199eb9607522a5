"""What leaves the backend: alert events, retained per-camera state, Home Assistant discovery.

Only coarse labels, alert ids and times are published (see alerts.public_state / alert_json);
decrypted values never are. Alerts are QoS 1 and tracked as an outbox: `poll()` reports the
history rows whose message the broker acknowledged, so the history can mark them published.
"""
from __future__ import annotations

import json
import logging

from backend_decryptor.alerts import alert_json
from backend_decryptor.config import HomeAssistantConfig
from backend_decryptor.history import StoredAlert

log = logging.getLogger(__name__)


class Publisher:
    def __init__(self, receiver, prefix: str, home_assistant: HomeAssistantConfig):
        self.receiver = receiver
        self.prefix = prefix
        self.ha = home_assistant
        self._announced: set[str] = set()
        self._pending: list[tuple[object, int]] = []  # (MQTTMessageInfo, history row)

    def alert_topic(self, camera: str) -> str:
        return f"{self.prefix}/alerts/{camera}"

    def state_topic(self, camera: str) -> str:
        return f"{self.prefix}/state/{camera}"

    def alert(self, stored: StoredAlert) -> None:
        info = self.receiver.publish(self.alert_topic(stored.event.camera), json.dumps(alert_json(stored.event)), qos=1)
        self._pending.append((info, stored.row))

    def state(self, camera: str, state: dict) -> None:
        if self.ha.enabled and camera not in self._announced:
            self._discovery(camera)
        self.receiver.publish(self.state_topic(camera), json.dumps(state), qos=1, retain=True)

    def poll(self) -> list[int]:
        """History rows of alerts the broker has acknowledged since the last call."""
        done = [row for info, row in self._pending if info.is_published()]
        self._pending = [(info, row) for info, row in self._pending if not info.is_published()]
        return done

    def pending_count(self) -> int:
        return len(self._pending)

    def _discovery(self, camera: str) -> None:
        """Home Assistant MQTT discovery: a crowd-level sensor and two problem binary sensors per
        camera, all reading the retained state topic."""
        obj = "fhe_edge_" + "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in camera)
        device = {"identifiers": [obj], "name": f"Camera {camera}", "manufacturer": "fhe-edge"}
        base = {"state_topic": self.state_topic(camera), "device": device}
        entities = {
            ("sensor", "crowd_level"): {"name": "Crowd level", "value_template": "{{ value_json.crowd.level }}",
                                        "icon": "mdi:account-group"},
            ("binary_sensor", "crowd_alert"): {
                "name": "Crowd alert", "device_class": "problem",
                "value_template": "{{ 'ON' if value_json.crowd.alert else 'OFF' }}"},
            ("binary_sensor", "incident"): {
                "name": "Incident", "device_class": "problem",
                "value_template": "{{ 'ON' if value_json.incident.active else 'OFF' }}"},
        }
        for (component, key), spec in entities.items():
            payload = {**base, **spec, "unique_id": f"{obj}_{key}", "object_id": f"{obj}_{key}"}
            topic = f"{self.ha.discovery_prefix}/{component}/{obj}/{key}/config"
            self.receiver.publish(topic, json.dumps(payload), qos=1, retain=True)
        self._announced.add(camera)
