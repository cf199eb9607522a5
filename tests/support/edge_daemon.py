"""The gateway daemon (`edge-agent run`) as a subprocess for the tests, an MQTT collector of what
it publishes, and the model owner's side (a protected model, signed bundles, decryption)."""
from __future__ import annotations

import hashlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from protected_nn.envelope import decode
from tests.support.gateway_keys import write_key
from tests.support.mosquitto import Mosquitto, free_port
from tests.support.tiny_models import frame_model

REPO = Path(__file__).resolve().parents[2]


class ModelOwner:
    """The tiny frame model protected (with `outputs` as its card), the owner's signing key and
    public key file in `root`, bundles signed with it, decryption; with `store_as`, the protected
    model is also in an owner store (root/store) under that id, for a backend to decrypt."""

    def __init__(self, root: Path, outputs: list[dict] | None = None, store_as: str | None = None):
        from protected_nn import api, bundle
        self.dir = root
        path = frame_model(root / "tiny.onnx", outputs)
        self.protected = api.protect(path)
        self.signing_key = bundle.generate_owner_key()
        self.public_key = root / "owner.pub"
        bundle.save_public_key(self.signing_key, self.public_key)
        self.store = root / "store"
        if store_as:
            from backend_decryptor.store import Store
            Store(self.store).add_model(store_as, self.protected, hashlib.sha256(path.read_bytes()).hexdigest())

    def bundle(self, path: Path, model_id: str, version: int = 1) -> Path:
        from protected_nn import bundle
        bundle.write_bundle(path, model_id, self.protected.artifacts, self.signing_key, version=version)
        return path

    def decrypt(self, payload: bytes) -> np.ndarray:
        from protected_nn import api
        return api.OwnerModel(self.protected.artifacts, self.protected.secret_key).decrypt(payload)


def protected_owner() -> ModelOwner:
    """A ModelOwner in a temporary folder, for a module-scoped fixture (protecting takes seconds)."""
    try:
        return ModelOwner(Path(tempfile.mkdtemp(prefix="edge-owner-")))
    except NotImplementedError:
        pytest.skip("protected_nn.api.protect is not implemented yet")


class Collector:
    """MQTT subscriber with a persistent session, so nothing published while it reconnects after a
    broker restart is missed (given a broker that persists sessions: the `broker` fixture's
    "persistent" kind, tests/conftest.py)."""

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
