"""The one MQTT client set-up (service_common.mqtt_client / mqtt_link) with a real Mosquitto:
both services' clients leave a retained `offline` last will when their connection dies without a
goodbye, say `online` again when they are back, and the link delivers to the subscriber of each
topic, acknowledging what nobody subscribed to."""
from __future__ import annotations

import threading

import paho.mqtt.client as mqtt

from backend_decryptor.config import MQTTConfig
from backend_decryptor.receiver import mqtt_link
from edge_agent.config import MqttConfig
from edge_agent.metrics import Metrics
from edge_agent.publisher import Publisher
from edge_agent.spool import Spool
from service_common.topics import OFFLINE, ONLINE, Topics
from tests.support.process import eventually

T = Topics("fhe-edge")


class Watcher:
    """Records the last payload per topic it is subscribed to (retained ones included)."""

    def __init__(self, broker, topic_filter: str):
        self.last: dict[str, bytes] = {}
        self.ready = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.c.on_connect = lambda c, *a: c.subscribe(topic_filter, qos=1)
        self.c.on_subscribe = lambda *a: self.ready.set()
        self.c.on_message = lambda c, u, m: self.last.__setitem__(m.topic, m.payload)
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()
        assert self.ready.wait(10)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def drop_connection(client: mqtt.Client) -> None:
    """The network goes away: the socket closes without an MQTT DISCONNECT."""
    client.loop_stop()
    client.socket().close()


def test_the_backend_link_says_online_and_leaves_an_offline_will(broker):
    watcher = Watcher(broker, T.backend_availability_filter)
    link = mqtt_link(MQTTConfig(host=broker.host, port=broker.port, client_id="backend-w"))
    try:
        link.start()
        assert link.wait_connected(10)
        topic = T.backend_availability("backend-w")
        assert eventually(lambda: watcher.last.get(topic) == ONLINE.encode())
        drop_connection(link.client)
        assert eventually(lambda: watcher.last.get(topic) == OFFLINE.encode(), timeout=90)
    finally:
        watcher.close()


def test_the_gateway_publisher_leaves_the_same_will_on_its_topic(broker, tmp_path):
    watcher = Watcher(broker, T.gateway_availability("+"))
    pub = Publisher(MqttConfig(host=broker.host, port=broker.port, keepalive=5), "gw-w", Spool(tmp_path, 1 << 20),
                    Metrics()).start()
    try:
        topic = T.gateway_availability("gw-w")
        assert pub.connected.wait(10)
        assert eventually(lambda: watcher.last.get(topic) == ONLINE.encode())
        pub._stopping.set()
        drop_connection(pub.client)
        assert eventually(lambda: watcher.last.get(topic) == OFFLINE.encode(), timeout=90)
    finally:
        watcher.close()


def test_the_link_hands_each_topic_to_its_subscriber(broker):
    link = mqtt_link(MQTTConfig(host=broker.host, port=broker.port, client_id="backend-s", session_expiry=0))
    got: dict[str, list] = {"a": [], "b": []}
    link.subscribe("test/a/#", lambda m: (got["a"].append(m.topic), link.ack(m.mid, m.qos)))
    link.subscribe("$share/g/test/b/+", lambda m: (got["b"].append(m.topic), link.ack(m.mid, m.qos)))
    try:
        link.start()
        assert link.wait_connected(10)
        sender = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        sender.connect(broker.host, broker.port)
        sender.loop_start()
        for topic in ("test/a/1", "test/b/2", "test/a/x/y"):
            sender.publish(topic, b"p", qos=1).wait_for_publish(10)
        assert eventually(lambda: len(got["a"]) == 2 and len(got["b"]) == 1)
        assert got == {"a": ["test/a/1", "test/a/x/y"], "b": ["test/b/2"]}
        sender.disconnect()
        sender.loop_stop()
    finally:
        link.stop()
