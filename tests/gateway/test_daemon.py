"""The gateway daemon as a subprocess, with real parts: GStreamer RTSP camera, Mosquitto, the
encrypted model (a tiny ONNX protected with protected_nn.api) and the owner-side decryption.

Skipped until protected_nn.api.protect works (it starts running by itself once it does)."""
from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from protected_nn import api, bundle
from protected_nn.envelope import decode
from tests.support.gateway_keys import write_key
from tests.support.tiny_bundle import tiny_onnx
from tests.support.mosquitto import Mosquitto, free_port
from tests.support.rtsp_camera import RtspCamera, gstreamer_available

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not gstreamer_available(), reason="GStreamer RTSP server not installed")


@pytest.fixture(scope="module")
def owner():
    """Protected tiny model, owner signing key, a signed bundle factory."""
    d = Path(tempfile.mkdtemp(prefix="edge-owner-"))
    tiny_onnx(d / "tiny.onnx")
    try:
        prot = api.protect(d / "tiny.onnx")
    except NotImplementedError:
        pytest.skip("protected_nn.api.protect is not implemented yet")
    key = bundle.generate_owner_key()
    bundle.save_public_key(key, d / "owner.pub")

    class Owner:
        dir = d
        protected = prot
        signing_key = key
        public_key = d / "owner.pub"

        def bundle(self, path: Path, model_id: str, version: int = 1) -> Path:
            bundle.write_bundle(path, model_id, prot.artifacts, key, version=version)
            return path

        def decrypt(self, payload: bytes) -> np.ndarray:
            return api.OwnerModel(prot.artifacts, prot.secret_key).decrypt(payload)
    return Owner()


class Collector:
    """MQTT subscriber with a persistent session, so nothing published while it reconnects after a
    broker restart is missed (the broker persists sessions, see `broker` below)."""

    def __init__(self, broker: Mosquitto):
        self.q: queue.Queue = queue.Queue()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"collector-{os.getpid()}-{id(self)}",
                             protocol=mqtt.MQTTv5)
        self.c.on_message = lambda c, u, m: self.q.put((m.topic, m.payload))
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe("fhe-edge/#", qos=1)
        self.c.reconnect_delay_set(0.2, 1)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.c.connect(broker.host, broker.port, clean_start=False, properties=props)
        self.c.loop_start()

    def until(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                topic, payload = self.q.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if predicate(topic, payload):
                return topic, payload
        raise AssertionError(f"timed out waiting for {what}")

    def results(self, n: int, timeout: float) -> list:
        out = []
        while len(out) < n:
            _, payload = self.until(lambda t, p: "/infer/" in t, timeout, f"{n} results (got {len(out)})")
            out.append(decode(payload, max_size=64 << 20))
        return out

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def broker(tmp_path):
    persist = tmp_path / "mosq-db"
    persist.mkdir()
    # tests/support/mosquitto.py keeps the current user, so mosquitto may write its persistence file.
    extra = f"persistence true\npersistence_location {persist}/\n"
    with Mosquitto(extra_config=extra) as b:
        yield b


class Daemon:
    def __init__(self, tmp_path: Path, owner, broker: Mosquitto, cameras: dict[str, str], **settings):
        self.dir = tmp_path
        self.bundle = tmp_path / "model.bundle"
        if not self.bundle.exists():
            owner.bundle(self.bundle, "tiny-v1")
        self.metrics_port = free_port()
        cfg = {
            "gateway_id": "gw-test", "bundle": str(self.bundle), "owner_public_key": str(owner.public_key),
            "signing_key_file": str(write_key(tmp_path / "signing.key", settings.get("gateway_id", "gw-test"))),
            "cameras": [{"id": k, "url": v, "max_fps": 2} for k, v in cameras.items()],
            "mqtt": {"host": broker.host, "port": broker.port},
            "workers": 2, "queue_size": 4, "state_dir": str(tmp_path / "state"),
            "spool": {"directory": str(tmp_path / "spool"), "max_bytes": 64 << 20},
            "capture": {"open_timeout_s": 5, "read_timeout_s": 2, "reconnect_min_s": 0.5, "reconnect_max_s": 2},
            "metrics_address": f"127.0.0.1:{self.metrics_port}", "stats_interval_s": 1, "bundle_poll_s": 0.5,
        } | settings
        self.config = tmp_path / "edge.yaml"
        self.config.write_text(json.dumps(cfg))          # JSON is YAML
        self.notify_path = str(tmp_path / "notify.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self.log = open(tmp_path / "daemon.log", "w+")
        env = dict(os.environ, NOTIFY_SOCKET=self.notify_path, WATCHDOG_USEC="2000000",
                   PYTHONUNBUFFERED="1")
        env.pop("WATCHDOG_PID", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "run", "--config", str(self.config)],
                                     stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO, env=env)

    def notifications(self, timeout: float) -> list[str]:
        self.notify.settimeout(timeout)
        out = []
        try:
            while True:
                out.append(self.notify.recv(4096).decode())
                self.notify.settimeout(0.05)
        except (socket.timeout, BlockingIOError):
            return out

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "READY=1" in self.notifications(0.5):
                return
            assert self.proc.poll() is None, self.output()
        raise AssertionError("no READY=1: " + self.output())

    def metric(self, name: str) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name) and not line.startswith("#"))

    def wait_metric(self, name: str, at_least: float, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.metric(name) < at_least:
            time.sleep(0.2)
        assert self.metric(name) >= at_least, f"{name} < {at_least}: {self.output()}"

    def workers(self) -> list[int]:
        # /proc lists children per thread that forked them (the pool thread): look at all threads.
        pids = []
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            try:
                children = (task / "children").read_text().split()
                pids += [int(p) for p in children if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
            except OSError:
                continue          # thread or child gone meanwhile
        return sorted(pids)

    def output(self) -> str:
        self.log.flush()
        return (self.dir / "daemon.log").read_text()[-6000:]

    def terminate(self, timeout: float = 10) -> float:
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGUSR1)      # thread dump into the log, then kill
            time.sleep(1)
            self.proc.kill()
            raise AssertionError("daemon did not stop within 10 s after SIGTERM: " + self.output())
        return time.monotonic() - t0

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.notify.close()
        Path(self.notify_path).unlink(missing_ok=True)
        self.log.close()


@pytest.fixture
def camera():
    with RtspCamera(fps=10) as cam:
        yield cam


def stream_mean_gray(url: str) -> float:
    """What channel 0 averages to, measured independently of the daemon (the ball pattern's mean
    brightness hardly changes while the ball moves)."""
    cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG)
    try:
        values = []
        for _ in range(10):
            ok, frame = cap.read()
            assert ok
            values.append(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY).mean() / 255)
        return float(np.mean(values))
    finally:
        cap.release()


def test_frames_flow_end_to_end_and_decrypt_on_owner_side(tmp_path, owner, broker, camera):
    sub = Collector(broker)
    d = Daemon(tmp_path, owner, broker, {"cam-a": camera.url})
    try:
        d.wait_ready()
        envs = sub.results(4, timeout=60)
        expected_gray = stream_mean_gray(camera.url)
        for env in envs:
            assert (env.gateway_id, env.camera_id, env.model_id) == ("gw-test", "cam-a", "tiny-v1")
            assert env.key_fingerprint == owner.protected.artifacts.key_fingerprint
            assert abs(env.capture_time - time.time()) < 60
            y = owner.decrypt(env.payload)
            assert y.shape == (1, 2)
            assert abs(y[0, 0] - expected_gray) < 0.03, (y, expected_gray)   # mean gray of the frame
            assert -0.01 < y[0, 1] < 0.2                                     # mean motion
        seqs = [e.sequence for e in envs]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        # health: watchdog pings, STATUS, metrics, stats JSON, retained camera status
        notes = d.notifications(3)
        assert "WATCHDOG=1" in notes and any(n.startswith("STATUS=") and "fps" in n for n in notes)
        assert d.metric("edge_agent_frames_captured_total") > 0
        assert d.metric('edge_agent_stage_seconds_count{stage="infer"}') > 0
        _, stats = sub.until(lambda t, p: t == "fhe-edge/gateway/gw-test/stats", 10, "stats")
        assert json.loads(stats)["results"] >= 4
        # every key is documented (docs/gateway.md "Stats JSON"), and nothing documented is missing
        doc = (REPO / "docs/gateway.md").read_text().split("### Stats JSON", 1)[1].split("\n\n", 2)[1]
        documented = {k for row in doc.splitlines()[2:] for k in re.findall(r"`(\w+)`", row.split("|")[1])}
        assert documented == set(json.loads(stats)), set(json.loads(stats)) ^ documented
        assert json.loads(stats)["model_version"] == 1

        # camera goes away -> offline (retained); comes back -> online, results resume
        camera.stop()
        sub.until(lambda t, p: t == "fhe-edge/status/gw-test/cam-a" and p == b"offline", 20, "offline")
        camera.start()
        sub.until(lambda t, p: t == "fhe-edge/status/gw-test/cam-a" and p == b"online", 30, "online again")
        after = sub.results(2, timeout=30)
        assert after[0].sequence > seqs[-1]

        # SIGTERM: clean and quick, the gateway says offline
        assert d.terminate() < 10
        assert d.proc.returncode == 0, d.output()
        sub.until(lambda t, p: t == "fhe-edge/gateway/gw-test/availability" and p == b"offline", 5, "offline")
        assert "stopped in" in d.output()
    finally:
        d.close()
        sub.close()


def test_killed_worker_is_replaced_and_broker_outage_loses_nothing(tmp_path, owner, broker, camera):
    sub = Collector(broker)
    d = Daemon(tmp_path, owner, broker, {"cam-a": camera.url})
    try:
        d.wait_ready()
        sub.results(2, timeout=60)
        victim = d.workers()[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (victim in d.workers() or len(d.workers()) < 2):
            time.sleep(0.2)
        assert victim not in d.workers() and len(d.workers()) == 2, d.output()
        assert d.metric("edge_agent_worker_restarts_total") >= 1
        before = sub.results(2, timeout=30)                 # still producing

        broker.stop()
        time.sleep(30)                                      # the outage of the issue
        spooled = len(list((tmp_path / "spool").glob("*.msg")))
        assert spooled >= 20, d.output()                    # 2 fps for 30 s, on disk
        broker.start()
        # Every sequence number from before the outage until well after it must arrive.
        last = before[-1].sequence
        got = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (got and max(got) >= last + spooled + 4
                                                    and set(range(last + 1, max(got) + 1)) <= set(got)):
            for env in sub.results(1, timeout=60):
                got[env.sequence] = env
        missing = set(range(last + 1, max(got) + 1)) - set(got)
        assert not missing, f"lost results {sorted(missing)[:10]}"
        assert max(got) >= last + spooled
        assert all(owner.decrypt(got[s].payload).shape == (1, 2) for s in list(got)[:3])
        assert d.metric("edge_agent_spool_evictions") == 0
        d.terminate()
    finally:
        d.close()
        sub.close()


def test_bundle_reload_refuses_tampered_accepts_signed_and_sequences_survive_restart(tmp_path, owner, broker, camera):
    sub = Collector(broker)
    d = Daemon(tmp_path, owner, broker, {"cam-a": camera.url})
    try:
        d.wait_ready()
        sub.results(1, timeout=60)
        # tampered: one byte flipped -> refused, the old model keeps running
        data = bytearray(d.bundle.read_bytes())
        data[len(data) // 2] ^= 0xFF
        tmp = d.bundle.with_suffix(".new")
        tmp.write_bytes(bytes(data))
        os.replace(tmp, d.bundle)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and d.metric('edge_agent_bundle_loads_total{result="refused"}') < 1:
            time.sleep(0.2)
        assert d.metric('edge_agent_bundle_loads_total{result="refused"}') >= 1
        assert "REFUSED" in d.output()
        assert sub.results(2, timeout=30)[-1].model_id == "tiny-v1"
        # signed by someone else -> refused too
        bundle.write_bundle(tmp, "evil", owner.protected.artifacts, bundle.generate_owner_key())
        os.replace(tmp, d.bundle)
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and d.metric('edge_agent_bundle_loads_total{result="refused"}') < 2:
            time.sleep(0.2)
        assert d.metric('edge_agent_bundle_loads_total{result="refused"}') >= 2
        # properly signed, but another model -> refused (model pinned at first start)
        owner.bundle(tmp, "tiny-v2", version=5)
        os.replace(tmp, d.bundle)
        d.wait_metric('edge_agent_bundle_refused_total{reason="model_mismatch"}', 1)
        # a newer version of the running model -> picked up without restart
        owner.bundle(tmp, "tiny-v1", version=2)
        os.replace(tmp, d.bundle)
        d.wait_metric('edge_agent_bundle_version', 2)
        # and the older one again (a validly signed rollback) -> refused, version 2 keeps running
        owner.bundle(tmp, "tiny-v1", version=1)
        os.replace(tmp, d.bundle)
        d.wait_metric('edge_agent_bundle_refused_total{reason="rollback"}', 1)
        assert "REFUSED (rollback)" in d.output() and d.metric('edge_agent_bundle_version') == 2
        assert d.metric('edge_agent_bundle_loads_total{result="loaded"}') == 2
        owner.bundle(tmp, "tiny-v1", version=2)     # so that the restart below starts from v2
        os.replace(tmp, d.bundle)
        d.wait_metric('edge_agent_bundle_loads_total{result="loaded"}', 3)
        last = max(e.sequence for e in sub.results(2, timeout=30))
        assert d.terminate() < 10
    finally:
        d.close()
    d2 = Daemon(tmp_path, owner, broker, {"cam-a": camera.url})
    try:
        d2.wait_ready()
        first = sub.results(1, timeout=60)[0]
        assert first.sequence > last                        # no replay after a restart
        d2.terminate()
    finally:
        d2.close()
        sub.close()


def test_bad_config_gets_a_precise_error(tmp_path):
    cfg = tmp_path / "edge.yaml"
    cfg.write_text("gateway_id: gw\nbundle: b\nowner_public_key: missing.pub\ncameras: []\nmqtt: {host: h, qos: 3}\n")
    run = subprocess.run([sys.executable, "-m", "edge_agent.cli", "run", "--config", str(cfg)],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert run.returncode == 2
    assert f"{cfg}:3: owner_public_key: file" in run.stderr
    assert f"{cfg}:4: cameras: List should have at least 1 item" in run.stderr
    assert f"{cfg}:5: mqtt.qos: " in run.stderr
