"""The demo's monitor reads the topics the services publish from the same grammar
(service_common.topics.Topics), not from strings it builds by hand (audit after issue 12). With a
real Mosquitto: a prefix given with a trailing slash or several levels still reaches the monitor,
as it reaches the services (Topics normalises it), and a topic outside the grammar is ignored."""
from __future__ import annotations

import json
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from demo.monitor import Monitor
from service_common.topics import ONLINE, Topics


def wait(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def publisher(broker):
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-publisher", protocol=mqtt.MQTTv5)
    connected = threading.Event()
    c.on_connect = lambda *a: connected.set()
    c.connect(broker.host, broker.port)
    c.loop_start()
    assert connected.wait(10)
    yield c
    c.disconnect()
    c.loop_stop()


@pytest.mark.parametrize("prefix", ["fhe-edge", "city/fhe-edge/", "site/a/b"])
def test_the_monitor_sees_what_the_services_publish(broker, publisher, prefix):
    monitor = Monitor(broker.port, prefix, "cam1")
    try:
        assert monitor.subscribed.wait(10)
        t = Topics(prefix)               # what the gateway and the backend publish on
        publisher.publish(t.status("gw-1", "cam1"), ONLINE, qos=1).wait_for_publish(5)
        publisher.publish(t.status("gw-1", "cam2"), "offline", qos=1).wait_for_publish(5)   # another camera
        publisher.publish(t.infer("gw-1", "cam1"), b"\x00opaque", qos=0)
        publisher.publish(t.state("cam1"), json.dumps({"crowd": {"level": "high"}}), qos=1)
        alert = {"id": "a1", "event": "raised", "type": "crowd", "level": "high", "time": 1.0}
        for _ in range(2):               # a redelivery is dropped
            publisher.publish(t.alerts("cam1"), json.dumps(alert), qos=1).wait_for_publish(5)
        publisher.publish(f"{t.prefix}/alerts/cam1/extra", json.dumps({**alert, "id": "x"}), qos=1)
        assert wait(lambda: monitor.raised("crowd") == 1 and monitor.last_level() == "high"
                    and monitor.encrypted_results == 1), (monitor.observed, monitor.encrypted_results)
        assert monitor.wait_camera_online(5)
        time.sleep(0.3)                   # anything else would have arrived by now
        assert [a["id"] for a in monitor.observed.alerts] == ["a1"] and monitor.observed.malformed == 0
        assert monitor.camera_status == ONLINE
    finally:
        monitor.close()
