"""The Transport (transport.py) over a real broker: one paho-mqtt client from make_client.

On every connection the link publishes `online` (retained) on its availability topic - the last
will says `offline` when the connection dies without a goodbye - and subscribes again to every
filter registered with `subscribe`. `connected` is set only once the required subscriptions are
granted: a message published before the broker has a subscription would not be queued for this
session.
"""
from __future__ import annotations

import logging
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from service_common.broker import BrokerSettings
from service_common.mqtt_client import make_client
from service_common.topics import OFFLINE, ONLINE
from service_common.transport import Handler, Message, matching

log = logging.getLogger(__name__)


class MqttLink:
    def __init__(self, broker: BrokerSettings, *, client_id: str, availability_topic: str,
                 password: str | None = None, manual_ack: bool = True, reconnect_max_s: float = 30.0,
                 session_expiry: float | None = None, receive_maximum: int | None = None):
        """`session_expiry` (seconds): a persistent session - the broker queues this client's
        messages while it is away and redelivers what it did not acknowledge. `receive_maximum`:
        MQTT 5's bound on messages delivered to us and not yet acknowledged."""
        self.broker = broker
        self.availability_topic = availability_topic
        self.connected = threading.Event()
        self._subscriptions: list[tuple[str, Handler, int, str | None]] = []
        self._requests: dict[int, list[tuple[str, Handler, int, str | None]]] = {}
        self._session_expiry, self._receive_maximum = session_expiry, receive_maximum
        c = make_client(broker, client_id=client_id, will_topic=availability_topic, password=password,
                        manual_ack=manual_ack, reconnect_max_s=reconnect_max_s)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        self.client = c

    # -- Transport ------------------------------------------------------------------------------
    def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1, *, optional: str | None = None) -> None:
        entry = (topic_filter, handler, qos, optional)
        self._subscriptions.append(entry)
        if self.client.is_connected():
            self._request([entry])

    def publish(self, topic: str, payload: str | bytes, qos: int = 1, retain: bool = False) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos=qos, retain=retain)

    def ack(self, mid: int, qos: int) -> None:
        if qos > 0:
            self.client.ack(mid, qos)

    def start(self) -> None:
        props = None
        if self._session_expiry is not None or self._receive_maximum is not None:
            props = Properties(PacketTypes.CONNECT)
            if self._session_expiry is not None:
                props.SessionExpiryInterval = int(self._session_expiry)
            if self._receive_maximum is not None:
                props.ReceiveMaximum = self._receive_maximum
        self.client.connect_async(self.broker.host, self.broker.port, keepalive=self.broker.keepalive,
                                  clean_start=self._session_expiry is None, properties=props)
        self.client.loop_start()

    def wait_connected(self, timeout: float) -> bool:
        return self.connected.wait(timeout)

    def stop(self, timeout: float = 3.0) -> None:
        """Say offline (retained), then disconnect cleanly; the session (and any message not
        acknowledged) stays with the broker for the next start."""
        if self.connected.is_set():
            info = self.client.publish(self.availability_topic, OFFLINE, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                pass
        self.client.disconnect()
        self.client.loop_stop()

    # -- paho callbacks (network thread) --------------------------------------------------------
    def _request(self, entries) -> None:
        result, mid = self.client.subscribe([(f, q) for f, _, q, _ in entries])
        if result == mqtt.MQTT_ERR_SUCCESS:
            self._requests[mid] = list(entries)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        where = f"{self.broker.host}:{self.broker.port}"
        if reason_code.is_failure:
            log.error("broker %s refused the connection: %s", where, reason_code)
            return
        log.info("connected to %s (session present: %s)", where, flags.session_present)
        client.publish(self.availability_topic, ONLINE, qos=1, retain=True)
        if self._subscriptions:
            self._request(self._subscriptions)
        else:
            self.connected.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        entries = self._requests.pop(mid, [])
        ready = True
        for (topic_filter, _, _, optional), rc in zip(entries, reason_codes):
            if not rc.is_failure:
                continue
            if optional is None:
                log.error("the broker refused the subscription %s: %s", topic_filter, rc)
                ready = False
            else:
                log.warning("the broker refused %s (%s): %s", topic_filter, rc, optional)
        if ready:
            self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        if reason_code != 0:
            log.warning("disconnected from the broker (%s); reconnecting", reason_code)

    def _on_message(self, client, userdata, msg) -> None:
        handler = matching([(f, h) for f, h, _, _ in self._subscriptions], msg.topic)
        message = Message(msg.topic, msg.payload, msg.mid, msg.qos, bool(msg.retain))
        if handler is None:
            self.ack(msg.mid, msg.qos)        # nobody asked for it: do not hold the broker's window
            return
        try:
            handler(message)
        except Exception:  # the network thread must survive anything a message triggers
            log.exception("unexpected error handling a message on %s", msg.topic[:120])
