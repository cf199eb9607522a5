"""Every MQTT topic of the system, built and parsed in this one place (docs/ARCHITECTURE.md):

    <prefix>/infer/<gateway>/<camera>           gateway -> backend: a signed, encrypted result (QoS 1)
    <prefix>/status/<gateway>/<camera>          retained camera status: online | offline
    <prefix>/gateway/<gateway>/availability     retained: online | offline (last will)
    <prefix>/gateway/<gateway>/stats            the gateway's periodic stats JSON
    <prefix>/backend/<client id>/availability   retained: online | offline (last will)
    <prefix>/alerts/<camera>                    backend -> dashboards: alert events (QoS 1)
    <prefix>/state/<camera>                     retained per-camera state
    <discovery prefix>/<component>/<object id>/<key>/config   Home Assistant discovery (retained)

Backend replicas read the result stream through the shared subscription
`$share/<group>/<prefix>/infer/+/+`, so replicas in one group split it.
"""
from __future__ import annotations

# The availability words: the payload of every availability and camera status topic, and what
# Home Assistant discovery tells dashboards to expect.
ONLINE, OFFLINE = "online", "offline"


class TopicError(ValueError):
    """A topic that does not have the shape the grammar above gives it."""


class Topics:
    def __init__(self, prefix: str):
        self.prefix = prefix.strip("/")
        self._parts = self.prefix.split("/")

    # -- what gateways publish ----------------------------------------------------------------
    def infer(self, gateway: str, camera: str) -> str:
        return f"{self.prefix}/infer/{gateway}/{camera}"

    def status(self, gateway: str, camera: str) -> str:
        return f"{self.prefix}/status/{gateway}/{camera}"

    def gateway_availability(self, gateway: str) -> str:
        return f"{self.prefix}/gateway/{gateway}/availability"

    def gateway_stats(self, gateway: str) -> str:
        return f"{self.prefix}/gateway/{gateway}/stats"

    # -- what the backend publishes -------------------------------------------------------------
    def backend_availability(self, client_id: str) -> str:
        return f"{self.prefix}/backend/{client_id}/availability"

    def alerts(self, camera: str) -> str:
        return f"{self.prefix}/alerts/{camera}"

    def state(self, camera: str) -> str:
        return f"{self.prefix}/state/{camera}"

    @staticmethod
    def home_assistant_config(discovery_prefix: str, component: str, object_id: str, key: str) -> str:
        """Home Assistant MQTT discovery: the retained config of one entity."""
        return f"{discovery_prefix}/{component}/{object_id}/{key}/config"

    # -- what the backend subscribes to ---------------------------------------------------------
    def infer_subscription(self, shared_group: str) -> str:
        return f"$share/{shared_group}/{self.prefix}/infer/+/+"

    @property
    def backend_availability_filter(self) -> str:
        return f"{self.prefix}/backend/+/availability"

    # -- parsing --------------------------------------------------------------------------------
    def _levels(self, topic: str, kind: str, count: int) -> list[str] | None:
        parts = topic.split("/")
        n = len(self._parts)
        if len(parts) != n + 1 + count or parts[:n] != self._parts or parts[n] != kind:
            return None
        return parts[n + 1:]

    def parse_infer(self, topic: str) -> tuple[str, str]:
        """(gateway, camera) of a result topic; TopicError for any other topic."""
        levels = self._levels(topic, "infer", 2)
        if levels is None:
            raise TopicError(f"topic {topic[:120]!r} is not <prefix>/infer/<gateway>/<camera>")
        return levels[0], levels[1]

    def is_infer(self, topic: str) -> bool:
        return self._levels(topic, "infer", 2) is not None

    def parse_backend_availability(self, topic: str) -> str | None:
        """The client id of a backend replica's availability topic, or None."""
        levels = self._levels(topic, "backend", 2)
        return levels[0] if levels is not None and levels[1] == "availability" and levels[0] else None
