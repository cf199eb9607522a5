"""The inbound side of the service: what it subscribes to on the transport the service owns.

- Results: the shared subscription `$share/<group>/<prefix>/infer/+/+` (replicas in one group split
  the stream), each handed to the pipeline, which acknowledges it once fully handled.
- Peers: every replica also reads the others' availability, so a replica started once with another
  client id (which keeps its share of the stream queued while its session lives) is logged and
  counted (`backend_peer_replicas{state}`) instead of silently taking results.

The MQTT side (mqtt_link below): a persistent session (clean start off, session expiry from the
config), so messages that arrive while the replica restarts are queued by the broker and messages
delivered but not acknowledged are redelivered; manual acknowledgement; MQTT 5 receive maximum =
`max_in_flight`, which bounds memory and spreads load; availability
`<prefix>/backend/<client id>/availability` retained "online", last will "offline".
"""
from __future__ import annotations

import logging
from typing import Callable

from backend_decryptor.config import MQTTConfig
from service_common.mqtt_link import MqttLink
from service_common.topics import ONLINE, Topics
from service_common.transport import Message, Transport

log = logging.getLogger(__name__)
MAX_PEERS = 256   # replicas tracked for the duplicate-replica warning; more than any deployment has


def mqtt_link(cfg: MQTTConfig) -> MqttLink:
    """The backend's link to the broker (what Service uses unless given another transport)."""
    return MqttLink(cfg, client_id=cfg.client_id, password=cfg.password(),
                    availability_topic=Topics(cfg.topic_prefix).backend_availability(cfg.client_id),
                    manual_ack=True, reconnect_max_s=cfg.reconnect_max_s,
                    session_expiry=cfg.session_expiry, receive_maximum=cfg.max_in_flight)


class Receiver:
    def __init__(self, transport: Transport, cfg: MQTTConfig, on_message: Callable[[str, bytes, int, int], None],
                 on_peers: Callable[[dict[str, str]], None] | None = None):
        """Subscribes at once. `on_message(topic, payload, mid, qos)` runs in the network thread
        and must not block; the message stays unacknowledged until `transport.ack(mid, qos)`.
        `on_peers(peers)` gets the other replicas' last availability word by client id whenever
        it changes."""
        self.cfg = cfg
        self.transport = transport
        self.topics = Topics(cfg.topic_prefix)
        self.on_message = on_message
        self.on_peers = on_peers or (lambda peers: None)
        self.peers: dict[str, str] = {}
        self.subscription = self.topics.infer_subscription(cfg.shared_group)
        transport.subscribe(self.subscription, self._on_result, qos=1)
        transport.subscribe(self.topics.backend_availability_filter, self._on_peer, qos=1,
                            optional=f"other replicas will not be noticed; allow the backend user to read "
                                     f"{self.topics.prefix}/backend/# (configs/mosquitto/acl)")

    @property
    def connected(self):
        return self.transport.connected

    def wait_connected(self, timeout: float) -> bool:
        """True once the broker has granted the result subscription."""
        return self.transport.wait_connected(timeout)

    def _on_result(self, msg: Message) -> None:
        self.on_message(msg.topic, msg.payload, msg.mid, msg.qos)

    def _on_peer(self, msg: Message) -> None:
        try:
            self._on_peer_availability(msg.topic, msg.payload)
        finally:
            self.transport.ack(msg.mid, msg.qos)

    def _on_peer_availability(self, topic: str, payload: bytes) -> None:
        peer = self.topics.parse_backend_availability(topic)
        state = payload.decode("utf-8", "replace")[:16]
        if peer is None or peer == self.cfg.client_id or not state or self.peers.get(peer) == state:
            return
        if peer not in self.peers and len(self.peers) >= MAX_PEERS:
            return   # whoever can write these topics must not grow this table without bound
        self.peers[peer] = state
        if state == ONLINE:
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
