"""The MQTT side of the service: one paho-mqtt 2 client (callback API v2, MQTT 5).

- Persistent session (clean start off, session expiry from the config): messages that arrive while
  the replica restarts are queued by the broker, and messages delivered but not acknowledged are
  redelivered when it comes back.
- Manual acknowledgement: a QoS 1 message is acknowledged only after it has been fully handled,
  so a crash or stop never loses one.
- MQTT 5 receive maximum = `max_in_flight`: the broker never has more than that many
  unacknowledged messages out to this replica, which bounds memory and spreads load.
- Shared subscription `$share/<group>/<prefix>/infer/+/+`: replicas in one group split the stream.
- Availability: `<prefix>/backend/<client id>/availability` retained "online", last will "offline".
- Peers: every replica also reads the others' availability, so a replica started once with
  another client id (which keeps its share of the stream queued while its session lives) is
  logged and counted (`backend_peer_replicas{state}`) instead of silently taking results.
"""
from __future__ import annotations

import logging
import ssl
import threading
from typing import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from backend_decryptor.config import MQTTConfig

log = logging.getLogger(__name__)
MAX_PEERS = 256   # replicas tracked for the duplicate-replica warning; more than any deployment has


class Receiver:
    def __init__(self, cfg: MQTTConfig, on_message: Callable[[str, bytes, int, int], None],
                 on_peers: Callable[[dict[str, str]], None] | None = None):
        """`on_message(topic, payload, mid, qos)` runs in the network thread and must not block;
        the message stays unacknowledged until `ack(mid, qos)`. `on_peers(peers)` gets the other
        replicas' last availability word by client id whenever it changes."""
        self.cfg = cfg
        self.on_message = on_message
        self.on_peers = on_peers or (lambda peers: None)
        self.peers: dict[str, str] = {}
        self.connected = threading.Event()
        self.availability_topic = f"{cfg.prefix}/backend/{cfg.client_id}/availability"
        self.peer_topic = f"{cfg.prefix}/backend/+/availability"
        self.subscription = f"$share/{cfg.shared_group}/{cfg.prefix}/infer/+/+"
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cfg.client_id,
                        protocol=mqtt.MQTTv5, manual_ack=True)
        if cfg.username:
            c.username_pw_set(cfg.username, cfg.password())
        if cfg.tls is not None:
            c.tls_set(ca_certs=str(cfg.tls.ca_file) if cfg.tls.ca_file else None,
                      certfile=str(cfg.tls.cert_file) if cfg.tls.cert_file else None,
                      keyfile=str(cfg.tls.key_file) if cfg.tls.key_file else None,
                      cert_reqs=ssl.CERT_REQUIRED)
            c.tls_insecure_set(cfg.tls.insecure)
        c.will_set(self.availability_topic, "offline", qos=1, retain=True)
        c.reconnect_delay_set(1, max(1, int(cfg.reconnect_max_s)))
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        self.client = c

    def _connect_properties(self) -> Properties:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = int(self.cfg.session_expiry)
        props.ReceiveMaximum = self.cfg.max_in_flight
        return props

    def start(self) -> None:
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive,
                                  clean_start=False, properties=self._connect_properties())
        self.client.loop_start()

    def wait_connected(self, timeout: float) -> bool:
        return self.connected.wait(timeout)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker %s:%s refused the connection: %s", self.cfg.host, self.cfg.port, reason_code)
            return
        log.info("connected to %s:%s (session present: %s)", self.cfg.host, self.cfg.port, flags.session_present)
        client.publish(self.availability_topic, "online", qos=1, retain=True)
        client.subscribe([(self.subscription, 1), (self.peer_topic, 1)])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        # "connected" means subscribed: a message published before the broker has the (first)
        # subscription would not be queued for this session.
        stream, peers = reason_codes[0], reason_codes[1:]
        if stream.is_failure:
            log.error("the broker refused the subscription %s: %s", self.subscription, stream)
            return
        if any(rc.is_failure for rc in peers):
            log.warning("the broker refused %s (%s): other replicas will not be noticed; allow the backend user "
                        "to read %s/backend/# (configs/mosquitto/acl)", self.peer_topic, peers[0], self.cfg.prefix)
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        if reason_code != 0:
            log.warning("disconnected from the broker (%s); reconnecting", reason_code)

    def _on_message(self, client, userdata, msg) -> None:
        if not msg.topic.startswith(f"{self.cfg.prefix}/infer/"):
            self._on_peer_availability(msg.topic, msg.payload)
            self.ack(msg.mid, msg.qos)
            return
        try:
            self.on_message(msg.topic, msg.payload, msg.mid, msg.qos)
        except Exception:  # the network thread must survive anything a message triggers
            log.exception("unexpected error handling a message on %s", msg.topic[:120])

    def _on_peer_availability(self, topic: str, payload: bytes) -> None:
        parts = topic.split("/")
        if len(parts) < 3 or parts[-1] != "availability":
            return
        peer, state = parts[-2], payload.decode("utf-8", "replace")[:16]
        if peer == self.cfg.client_id or not state or self.peers.get(peer) == state:
            return
        if peer not in self.peers and len(self.peers) >= MAX_PEERS:
            return   # whoever can write these topics must not grow this table without bound
        self.peers[peer] = state
        if state == "online":
            log.warning("another backend replica %r is online on this broker: replicas in shared group %r split "
                        "the inference stream between them (expected only if you run several replicas)",
                        peer, self.cfg.shared_group)
        else:
            log.warning("backend replica %r is %s but the broker may keep its session (mqtt.session_expiry, %.0f s "
                        "here) and queue its share of the stream for it until then; retire a replica for good by "
                        "starting it once with mqtt.session_expiry: 0 (docs/backend.md)",
                        peer, state, self.cfg.session_expiry)
        try:
            self.on_peers(dict(self.peers))
        except Exception:
            log.exception("peer callback failed")

    def ack(self, mid: int, qos: int) -> None:
        if qos > 0:
            self.client.ack(mid, qos)

    def publish(self, topic: str, payload: str | bytes, qos: int = 1, retain: bool = False) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos=qos, retain=retain)

    def stop(self, timeout: float = 3.0) -> None:
        """Say offline (retained), then disconnect cleanly; the session (and any message we did not
        acknowledge) stays with the broker for the next start."""
        if self.connected.is_set():
            info = self.client.publish(self.availability_topic, "offline", qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                pass
        self.client.disconnect()
        self.client.loop_stop()
