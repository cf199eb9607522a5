"""The message transport as a service's parts use it: publish, subscribe, acknowledge, stop.

The service owns one transport and hands it to its inbound side (which subscribes) and to its
publisher; MqttLink (mqtt_link.py) is the real one, MemoryTransport below runs the same parts in
one process without a broker (tests of the checks and rules; end-to-end tests use Mosquitto).

Handlers run in the transport's network thread and must not block. A QoS 1 message stays
unacknowledged until `ack(mid, qos)`: whoever handles it acknowledges it once it is done with it.
"""
from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass
from typing import Callable, Protocol

from paho.mqtt.client import topic_matches_sub

from service_common.topics import OFFLINE, ONLINE


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    mid: int = 0
    qos: int = 0
    retain: bool = False


Handler = Callable[[Message], None]


class Delivery(Protocol):
    def is_published(self) -> bool:
        """True once the broker has acknowledged the message (QoS 1) or it has been sent (QoS 0)."""


class Transport(Protocol):
    connected: threading.Event          # set once connected and every required subscription granted

    def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1, *, optional: str | None = None) -> None:
        """Deliver messages matching `topic_filter` to `handler` (from now on and after every
        reconnection). `optional`: what a refusal by the broker costs (logged as a warning); a
        required subscription refused keeps the transport not `connected`."""

    def publish(self, topic: str, payload: str | bytes, qos: int = 1, retain: bool = False) -> Delivery: ...

    def ack(self, mid: int, qos: int) -> None: ...

    def start(self) -> None: ...

    def wait_connected(self, timeout: float) -> bool: ...

    def stop(self, timeout: float = 3.0) -> None:
        """Say offline, disconnect; what was not acknowledged stays with the broker."""


def filter_of(subscription: str) -> str:
    """The topic filter a (possibly shared, `$share/<group>/...`) subscription matches."""
    if subscription.startswith("$share/"):
        return subscription.split("/", 2)[2]
    return subscription


def matching(subscriptions: list[tuple[str, Handler]], topic: str) -> Handler | None:
    return next((h for s, h in subscriptions if topic_matches_sub(filter_of(s), topic)), None)


class _Done:
    def is_published(self) -> bool:
        return True


class MemoryTransport:
    """A broker in a list: `inject()` delivers a message as the broker would (with a message id),
    `published` records what the service sent, `retained` the last retained payload per topic,
    `acked` the message ids acknowledged. Publishing delivers to matching subscribers too, as a
    broker would (a replica sees its own availability)."""

    def __init__(self, availability_topic: str | None = None):
        self.availability_topic = availability_topic
        self.connected = threading.Event()
        self.published: list[Message] = []
        self.retained: dict[str, bytes] = {}
        self.acked: list[int] = []
        self._subscriptions: list[tuple[str, Handler]] = []
        self._mids = itertools.count(1)
        self._lock = threading.Lock()

    def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1, *, optional: str | None = None) -> None:
        # A service started again on the same transport subscribes again: the new handler replaces.
        self._subscriptions = [(f, h) for f, h in self._subscriptions if f != topic_filter]
        self._subscriptions.append((topic_filter, handler))

    def publish(self, topic: str, payload: str | bytes, qos: int = 1, retain: bool = False) -> Delivery:
        data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
        with self._lock:
            self.published.append(Message(topic, data, 0, qos, retain))
            if retain:
                self.retained[topic] = data
        self._deliver(topic, data, qos, retain)
        return _Done()

    def inject(self, topic: str, payload: bytes, qos: int = 1) -> int:
        """Deliver one message to the subscriber of its topic; its message id."""
        mid = next(self._mids)
        self._deliver(topic, payload, qos, False, mid)
        return mid

    def _deliver(self, topic: str, payload: bytes, qos: int, retain: bool, mid: int = 0) -> None:
        handler = matching(self._subscriptions, topic)
        if handler is not None:
            handler(Message(topic, payload, mid or next(self._mids), qos, retain))

    def ack(self, mid: int, qos: int) -> None:
        with self._lock:
            self.acked.append(mid)

    def sent(self, prefix: str) -> list[Message]:
        """What was published on topics starting with `prefix`, in order."""
        with self._lock:
            return [m for m in self.published if m.topic.startswith(prefix)]

    def start(self) -> None:
        if self.availability_topic:
            self.publish(self.availability_topic, ONLINE, retain=True)
        self.connected.set()

    def wait_connected(self, timeout: float) -> bool:
        return self.connected.wait(timeout)

    def stop(self, timeout: float = 3.0) -> None:
        if self.availability_topic and self.connected.is_set():
            self.publish(self.availability_topic, OFFLINE, retain=True)
        self.connected.clear()
