"""Gateway pipeline parts on their own, with real parts: preprocessing (against the trainer's own
code), spool, sequence numbers, RTSP capture (GStreamer server), MQTT publisher (Mosquitto)."""
from __future__ import annotations

import json
import queue
import time

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.capture import OFFLINE, ONLINE, CameraCapture
from edge_agent.config import CameraConfig, CaptureConfig, MqttConfig
from edge_agent.health import sd_notify
from edge_agent.metrics import Metrics
from edge_agent.preprocess import InputSpec, InputSpecError, Preprocessor
from edge_agent.publisher import Publisher
from edge_agent.sequences import LEASE, SequenceStore
from edge_agent.spool import Spool
from tests.support.mosquitto import Mosquitto
from tests.support.rtsp_camera import RtspCamera, gstreamer_available

needs_gst = pytest.mark.skipif(not gstreamer_available(), reason="GStreamer RTSP server not installed")


# -- preprocessing -------------------------------------------------------------------------------
def test_preprocess_matches_the_trainers_features():
    features = pytest.importorskip("training.features")
    rng = np.random.default_rng(1)
    now = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    prev = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    card = {"input": {"shape": [1, 2, 32, 32], "channels": "gray+motion", "scale": 1 / 255, "mean": 0, "std": 1}}
    pre = Preprocessor(InputSpec.from_card(card))
    expected = features.model_input(features.gray_small(now), features.gray_small(prev))
    np.testing.assert_array_equal(pre(now, prev), expected)
    first = pre(now, None)            # first frame: zero motion, as in training
    np.testing.assert_array_equal(first, features.model_input(features.gray_small(now), None))


def test_preprocess_modes_and_normalisation():
    frame = np.full((100, 200, 3), (10, 20, 30), np.uint8)
    x = Preprocessor(InputSpec.from_card({"input_shape": [1, 3, 5, 10], "input": {"mean": [0.5, 0, 0], "std": 2}}))(frame)
    assert x.shape == (1, 3, 5, 10) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, :, 0, 0], [(10 / 255 - 0.5) / 2, 20 / 255 / 2, 30 / 255 / 2], rtol=1e-6)
    gray = Preprocessor(InputSpec.from_card({"input_shape": [1, 1, 4, 4]}))(frame)
    assert gray.shape == (1, 1, 4, 4)


@pytest.mark.parametrize("card, needle", [
    ({}, "expected [1, C, H, W]"),
    ({"input": {"shape": [1, 3, 8, 8], "channels": "gray"}}, "do not fit 3 channel"),
    ({"input": {"shape": [1, 1, 8, 8], "std": 0}}, "std contains 0"),
    ({"input": {"shape": [1, 2, 8, 8], "mean": [0, 0, 0]}}, "mean"),
])
def test_bad_input_spec_is_refused_clearly(card, needle):
    with pytest.raises(InputSpecError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        InputSpec.from_card(card)


# -- spool and sequences -------------------------------------------------------------------------
def test_spool_order_bound_and_restart(tmp_path):
    spool = Spool(tmp_path, max_bytes=3 * 1100)
    for i in range(5):
        spool.append(f"t/{i}", bytes([i]) * 1000)
    assert len(spool) == 3 and spool.evicted == 2             # oldest two evicted, counted
    (tmp_path / "0000000000000099.tmp").write_bytes(b"torn")  # a crash mid-write
    again = Spool(tmp_path, max_bytes=10_000)
    assert [again.read(i)[0] for i in again.ids()] == ["t/2", "t/3", "t/4"]
    assert not list(tmp_path.glob("*.tmp"))
    new_id = again.append("t/5", b"x")
    assert new_id > max(again.ids()[:-1])                     # keeps counting after a restart
    for i in again.ids():
        again.remove(i)
    assert len(again) == 0 and again.size_bytes == 0


def test_sequences_never_repeat_across_restarts_and_crashes(tmp_path):
    store = SequenceStore(tmp_path)
    assert [store.next("a") for _ in range(3)] == [0, 1, 2]
    assert store.next("b") == 0
    crashed = SequenceStore(tmp_path)                 # no close(): a crash
    assert crashed.next("a") >= 3 and crashed.next("a") <= LEASE + 1
    n = crashed.next("b")
    crashed.close()
    clean = SequenceStore(tmp_path)                   # clean restart: continues exactly
    assert clean.next("b") == n + 1
    (tmp_path / "sequences.json").write_text("{corrupt")
    assert SequenceStore(tmp_path).next("a") > 10 ** 15   # unreadable state: time-based floor


def test_sd_notify_speaks_the_datagram_protocol(tmp_path, monkeypatch):
    import socket
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert sd_notify("READY=1")
        assert s.recv(100) == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not sd_notify("READY=1")


# -- capture (real RTSP server) ------------------------------------------------------------------
@needs_gst
def test_capture_frames_status_and_reconnect():
    frames: queue.Queue = queue.Queue()
    statuses: list[str] = []
    with RtspCamera(fps=10) as cam:
        cfg = CameraConfig(id="c1", url=cam.url, max_fps=5)
        settings = CaptureConfig(open_timeout_s=5, read_timeout_s=2, reconnect_min_s=0.2, reconnect_max_s=1)
        cap = CameraCapture(cfg, settings, lambda c, f, t, ref: frames.put((f, t, ref)),
                            lambda c, s: statuses.append(s)).start()
        try:
            f, t, _ = frames.get(timeout=20)
            assert f.shape == (240, 320, 3) and abs(t - time.time()) < 5
            got = [frames.get(timeout=5) for _ in range(6)]
            times = [t for _, t, _ in got]
            assert min(np.diff(times)) >= 0.15           # max_fps=5 respected (stream is 10 fps)
            assert any(ref is not None for _, _, ref in got)   # motion reference frames provided
            assert statuses == [ONLINE]
            cam.stop()
            deadline = time.monotonic() + 15
            while statuses[-1] != OFFLINE and time.monotonic() < deadline:
                time.sleep(0.1)
            assert statuses[-1] == OFFLINE
            cam.start()
            deadline = time.monotonic() + 30
            while statuses[-1] != ONLINE and time.monotonic() < deadline:
                time.sleep(0.1)
            assert statuses == [ONLINE, OFFLINE, ONLINE]     # came back by itself
        finally:
            cap.stop()


# -- publisher (real Mosquitto) ------------------------------------------------------------------
class Subscriber:
    """A dashboard-like subscriber whose session (and QoS 1 queue) outlives a broker restart, so a
    test does not race the publisher's reconnect against its own."""

    def __init__(self, broker: Mosquitto, topic: str):
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.messages: queue.Queue = queue.Queue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-subscriber",
                                  protocol=mqtt.MQTTv5)
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload, m.retain))
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 300
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect(broker.host, broker.port, clean_start=False, properties=props)
        self.client.loop_start()

    def get(self, timeout=10.0):
        return self.messages.get(timeout=timeout)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_publisher_order_spool_and_availability(tmp_path):
    (tmp_path / "mosq-db").mkdir()
    persistent = f"persistence true\npersistence_location {tmp_path / 'mosq-db'}/\n"
    with Mosquitto(extra_config=persistent) as broker:
        sub = Subscriber(broker, "fhe-edge/#")
        spool = Spool(tmp_path / "spool", 10 ** 7)
        pub = Publisher(MqttConfig(host=broker.host, port=broker.port, max_in_flight=4), "gw", spool, Metrics()).start()
        try:
            wait_for(pub.connected.is_set, 10, "connect")
            pub.set_camera_status("c1", ONLINE)
            for i in range(10):
                pub.submit_result("c1", f"r{i}".encode())
            seen = {}
            got = []
            while len(got) < 10:
                topic, payload, retain = sub.get()
                seen[topic] = payload
                if topic == "fhe-edge/infer/gw/c1":
                    got.append(payload)
            assert got == [f"r{i}".encode() for i in range(10)]
            assert seen["fhe-edge/gateway/gw/availability"] == b"online"
            assert seen["fhe-edge/status/gw/c1"] == b"online"

            broker.stop()                                  # outage: results go to disk
            wait_for(lambda: not pub.connected.is_set(), 10, "disconnect")
            for i in range(10, 20):
                pub.submit_result("c1", f"r{i}".encode())
            wait_for(lambda: len(spool) == 10, 5, "spooled results")
            broker.start()
            got = []
            deadline = time.monotonic() + 30
            early = {f"r{i}".encode() for i in range(10)}
            while len(got) < 10 and time.monotonic() < deadline:
                topic, payload, _ = sub.get(timeout=30)
                # QoS 1 is at-least-once: the restored session may redeliver r0..r9 once more
                if topic == "fhe-edge/infer/gw/c1" and payload not in early:
                    got.append(payload)
            assert got == [f"r{i}".encode() for i in range(10, 20)]   # nothing lost, in order
            wait_for(lambda: len(spool) == 0, 10, "spool drained after acks")
        finally:
            pub.close(timeout=2)
            sub.close()
        # Clean shutdown says offline (retained), seen by a late subscriber.
        late = Subscriber(broker, "fhe-edge/gateway/gw/availability")
        try:
            assert late.get() == ("fhe-edge/gateway/gw/availability", b"offline", True)
        finally:
            late.close()


def test_spooled_results_wait_for_a_shared_subscriber_after_a_broker_restart(tmp_path, resume=3.0):
    """Mosquitto 2.0.11 restores a persistent session after a restart but not its SHARED
    subscription: what arrives before the backend subscribes again is dropped. The gateway
    (resume_delay_s) holds its spool until a backend reconnecting within that delay is back.
    With resume=0 this test loses the spooled results (checked when the fix was written)."""
    (tmp_path / "mosq-db").mkdir()
    persistent = f"persistence true\npersistence_location {tmp_path / 'mosq-db'}/\n"
    with Mosquitto(extra_config=persistent) as broker:
        backend = Subscriber(broker, "$share/backend/fhe-edge/infer/+/+")
        spool = Spool(tmp_path / "spool", 10 ** 7)
        pub = Publisher(MqttConfig(host=broker.host, port=broker.port, resume_delay_s=resume), "gw",
                        spool, Metrics()).start()
        try:
            wait_for(pub.connected.is_set, 10, "connect")
            pub.submit_result("c1", b"r0")
            assert backend.get(timeout=10)[1] == b"r0"
            backend.client.loop_stop()                      # the backend is away during the restart
            broker.stop()
            wait_for(lambda: not pub.connected.is_set(), 10, "disconnect")
            for i in range(1, 6):
                pub.submit_result("c1", f"r{i}".encode())
            wait_for(lambda: len(spool) == 5, 5, "spooled results")
            broker.start()
            wait_for(pub.connected.is_set, 15, "the gateway reconnected")
            time.sleep(1.0)                                 # the backend comes back a second later
            backend.client.reconnect()
            backend.client.loop_start()
            got = []
            deadline = time.monotonic() + 20
            while len(got) < 5 and time.monotonic() < deadline:
                try:
                    payload = backend.get(timeout=1)[1]
                except queue.Empty:
                    continue
                if payload != b"r0":
                    got.append(payload)
            assert got == [f"r{i}".encode() for i in range(1, 6)]
        finally:
            pub.close(timeout=2)
            backend.close()


def test_publisher_stats_json_roundtrip(tmp_path):
    with Mosquitto() as broker:
        sub = Subscriber(broker, "fhe-edge/gateway/gw/stats")
        pub = Publisher(MqttConfig(host=broker.host, port=broker.port), "gw",
                        Spool(tmp_path, 10 ** 6), Metrics()).start()
        try:
            wait_for(pub.connected.is_set, 10, "connect")
            time.sleep(0.3)                                     # subscription in place
            pub.publish_stats(json.dumps({"fps": 1.5}))
            assert json.loads(sub.get()[1]) == {"fps": 1.5}
        finally:
            pub.close(timeout=1)
            sub.close()
