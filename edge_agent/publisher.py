"""MQTT publishing (paho-mqtt 2, callback API v2, MQTT 5) with the on-disk spool behind it.

Results keep their order: one sender thread owns every result publish. A result goes straight to
the broker when we are connected, nothing older waits in the spool and fewer than `max_in_flight`
results are unacknowledged; otherwise it is appended to the spool, which the sender drains in
order once the broker is back. Spooled messages leave the disk only when the broker has
acknowledged them (QoS 1 PUBACK), so a restart resends whatever was not acknowledged (the backend's
sequence check discards the rare duplicate). paho resends its own unacknowledged messages after a
reconnect, so we never hand the same message to paho twice within one run.

After every (re)connect, results wait `resume_delay_s` in the spool before they flow again (see
the field's description: Mosquitto does not restore shared subscriptions after a restart).

Retained state (availability, camera status) is re-published on every connect; the last will
marks the gateway `offline` if the connection dies without a goodbye.
"""
from __future__ import annotations

import logging
import queue
import threading
import time

import paho.mqtt.client as mqtt

from edge_agent.config import MqttConfig
from edge_agent.spool import Spool
from service_common.mqtt_client import make_client
from service_common.topics import OFFLINE, ONLINE, Topics

log = logging.getLogger(__name__)

class Publisher:
    def __init__(self, cfg: MqttConfig, gateway_id: str, spool: Spool, metrics,
                 password: str | None = None):
        self.cfg = cfg
        self.topics = Topics(cfg.topic_prefix)
        self.gateway_id = gateway_id
        self.availability_topic = self.topics.gateway_availability(gateway_id)
        self.spool = spool
        self.metrics = metrics
        self.connected = threading.Event()
        self._camera_status: dict[str, str] = {}
        self._status_lock = threading.Lock()
        self._incoming: queue.SimpleQueue = queue.SimpleQueue()    # (topic, payload, capture_time)
        self._acks: queue.SimpleQueue = queue.SimpleQueue()        # (mid, failed)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._direct: dict[int, tuple[str, bytes, float | None, float]] = {}  # mid -> message
        self._from_spool: dict[int, int] = {}                     # mid -> spool id
        self._handed_spool_ids: set[int] = set()
        self._resume_at = 0.0          # monotonic time after a (re)connect when results may flow
        self.acked = 0
        self.client = self._make_client(gateway_id, password)
        self._sender = threading.Thread(target=self._send_loop, name="mqtt-sender", daemon=True)

    # -- set-up ---------------------------------------------------------------------------------
    def _make_client(self, gateway_id: str, password: str | None) -> mqtt.Client:
        c = make_client(self.cfg, client_id=self.cfg.client_id or f"edge-{gateway_id}",
                        will_topic=self.availability_topic, password=password)
        c.max_inflight_messages_set(self.cfg.max_in_flight)
        c.max_queued_messages_set(0)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        return c

    def start(self) -> "Publisher":
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive)
        self.client.loop_start()
        self._sender.start()
        return self

    # -- paho callbacks (network thread: never block, never take our locks around paho calls) --
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker %s:%d refused the connection: %s", self.cfg.host, self.cfg.port, reason_code)
            self.metrics.publish_failures.labels(reason="connect_refused").inc()
            return
        log.info("connected to broker %s:%d", self.cfg.host, self.cfg.port)
        client.publish(self.availability_topic, ONLINE, qos=1, retain=True)
        with self._status_lock:
            statuses = dict(self._camera_status)
        for cam, status in statuses.items():
            client.publish(self.topics.status(self.gateway_id, cam), status, qos=1, retain=True)
        # Give backend replicas time to subscribe again: after a broker restart Mosquitto 2.0.11
        # has forgotten their shared subscription, and a result sent before they return is dropped.
        self._resume_at = time.monotonic() + self.cfg.resume_delay_s
        self.connected.set()
        self.metrics.mqtt_connected.set(1)
        self._wake.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self.connected.is_set() and not self._stopping.is_set():
            log.warning("disconnected from broker: %s", reason_code)
        self.connected.clear()
        self.metrics.mqtt_connected.set(0)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._acks.put((mid, reason_code.is_failure))
        self._wake.set()

    # -- what the daemon calls --------------------------------------------------------------------
    def submit_result(self, camera_id: str, payload: bytes, capture_time: float | None = None) -> None:
        """Queue one envelope for publication (never blocks on the network)."""
        self._incoming.put((self.topics.infer(self.gateway_id, camera_id), payload, capture_time))
        self._wake.set()

    def set_camera_status(self, camera_id: str, status: str) -> None:
        with self._status_lock:
            self._camera_status[camera_id] = status
        if self.connected.is_set():
            self.client.publish(self.topics.status(self.gateway_id, camera_id), status, qos=1, retain=True)

    def publish_stats(self, payload: str) -> None:
        if self.connected.is_set():
            self.client.publish(self.topics.gateway_stats(self.gateway_id), payload, qos=0)

    def alive(self) -> bool:
        return self._sender.is_alive()

    @property
    def unacked(self) -> int:
        return len(self._direct) + len(self._from_spool)

    # -- the sender thread ------------------------------------------------------------------------
    def _send_loop(self) -> None:
        while True:
            self._wake.wait(0.5)
            self._wake.clear()
            try:
                self._process_acks()
                self._process_incoming()
                self._drain_spool()
            except Exception:   # a bug here must not silently stop all publishing
                log.exception("publisher sender loop error")
            self._update_gauges()
            if self._stopping.is_set() and self._incoming.empty():
                return

    def _process_acks(self) -> None:
        while True:
            try:
                mid, failed = self._acks.get_nowait()
            except queue.Empty:
                return
            if failed:
                self.metrics.publish_failures.labels(reason="broker_rejected").inc()
            msg = self._direct.pop(mid, None)
            if msg is not None:
                if not failed:
                    self._record_latency(msg[2], msg[3])
            spool_id = self._from_spool.pop(mid, None)
            if spool_id is not None:
                self._handed_spool_ids.discard(spool_id)
                self.spool.remove(spool_id)   # a rejected message would be rejected forever: drop
            if not failed and (msg is not None or spool_id is not None):
                self.acked += 1

    def _record_latency(self, capture_time: float | None, submitted: float) -> None:
        now = time.time()
        self.metrics.stage_seconds.labels(stage="publish").observe(max(0.0, now - submitted))
        if capture_time is not None:
            self.metrics.stage_seconds.labels(stage="capture_to_publish").observe(max(0.0, now - capture_time))

    def _spool_backlog(self) -> list[int]:
        return [i for i in self.spool.ids() if i not in self._handed_spool_ids]

    def _can_send(self) -> bool:
        return (self.connected.is_set() and time.monotonic() >= self._resume_at
                and self.unacked < self.cfg.max_in_flight)

    def _process_incoming(self) -> None:
        while True:
            try:
                topic, payload, capture_time = self._incoming.get_nowait()
            except queue.Empty:
                return
            if self._can_send() and not self._spool_backlog():
                mid = self._publish(topic, payload)
                if mid is not None:
                    self._direct[mid] = (topic, payload, capture_time, time.time())
                    continue
            self.spool.append(topic, payload)

    def _drain_spool(self) -> None:
        for spool_id in self._spool_backlog():
            if not self._can_send():
                return
            message = self.spool.read(spool_id)
            if message is None:
                continue
            mid = self._publish(*message)
            if mid is None:
                return
            self._from_spool[mid] = spool_id
            self._handed_spool_ids.add(spool_id)

    def _publish(self, topic: str, payload: bytes) -> int | None:
        try:
            info = self.client.publish(topic, payload, qos=self.cfg.qos)
        except (ValueError, RuntimeError) as exc:
            log.error("publish to %s failed: %s", topic, exc)
            self.metrics.publish_failures.labels(reason="client_error").inc()
            return None
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            # NO_CONN still queues the message inside paho; it goes out after the reconnect.
            self.metrics.publish_failures.labels(reason=mqtt.error_string(info.rc)).inc()
            return None
        if self.cfg.qos == 0:
            self._acks.put((info.mid, False))
        return info.mid

    def _update_gauges(self) -> None:
        self.metrics.spool_messages.set(len(self.spool))
        self.metrics.spool_bytes.set(self.spool.size_bytes)
        self.metrics.spool_evictions.set(self.spool.evicted)

    # -- shutdown ---------------------------------------------------------------------------------
    def close(self, timeout: float = 3.0) -> None:
        """Publish what is queued (or spool it), say `offline`, disconnect."""
        deadline = time.monotonic() + timeout
        self._stopping.set()
        self._wake.set()
        self._sender.join(max(0.1, deadline - time.monotonic()))
        while self.unacked and self.connected.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
            self._process_acks()
        # Whatever is still unacknowledged and not on disk yet goes to the spool for next time.
        for topic, payload, _, _ in list(self._direct.values()):   # insertion = publish order
            self.spool.append(topic, payload)
        self._direct.clear()
        while True:
            try:
                topic, payload, _ = self._incoming.get_nowait()
            except queue.Empty:
                break
            self.spool.append(topic, payload)
        self._update_gauges()
        if self.connected.is_set():
            info = self.client.publish(self.availability_topic, OFFLINE, qos=1, retain=True)
            try:
                # up to 1 s even past the deadline: dashboards read this retained word, and a
                # disconnect before the broker acknowledged it could leave "online" behind
                info.wait_for_publish(1.0)
            except (RuntimeError, ValueError):
                pass
        self.client.disconnect()
        self.client.loop_stop()
