"""The secret key never reaches the gateway side, and only the backend's unit can read it.

A gateway daemon runs with a real camera while its broker is unreachable (so results pile up in
the on-disk spool), then the broker comes up and the results are published. Afterwards every file
the gateway received or wrote - bundle, config, owner key, spool, state dir, its log, a scrape of
its metrics endpoint - and every MQTT message it sent is searched for the secret key: the whole
serialized key, 16 windows of 24 bytes spread over it, and their hex and base64 spellings."""
from __future__ import annotations

import base64
import configparser
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.mosquitto import Mosquitto, free_port
from tests.support.rtsp_camera import RtspCamera, gstreamer_available
from tests.support.edge_daemon import Collector, Daemon
from tests.support.pipeline import ChainOwner

REPO = Path(__file__).resolve().parents[2]


def needles(secret: bytes) -> list[bytes]:
    step = max(1, (len(secret) - 24) // 15)
    windows = [secret[i:i + 24] for i in range(0, len(secret) - 24 + 1, step)][:16]
    out = [secret]
    for w in windows:
        out += [w, w.hex().encode(), base64.b64encode(w)[:28]]
    return out


def scan(paths: list[Path], blobs: list[bytes], secret: bytes) -> list[str]:
    found = []
    checks = needles(secret)
    for path in paths:
        data = path.read_bytes()
        found += [f"{path}: window {i}" for i, n in enumerate(checks) if n in data]
    for k, blob in enumerate(blobs):
        found += [f"MQTT message {k}: window {i}" for i, n in enumerate(checks) if n in blob]
    return found


@pytest.mark.skipif(not gstreamer_available(), reason="GStreamer RTSP server not installed")
def test_no_file_or_message_of_the_gateway_contains_the_secret_key(tmp_path):
    (tmp_path / "owner").mkdir()
    owner = ChainOwner(tmp_path / "owner")
    secret = owner.protected.secret_key
    assert len(secret) > 1000 and len(needles(secret)) > 40
    gw = tmp_path / "gw"
    gw.mkdir()
    port = free_port()
    with RtspCamera(fps=10) as camera:
        broker = Mosquitto(port=port)                     # not started yet: the gateway spools
        d = Daemon(gw, owner, broker, {"cam-a": camera.url})
        try:
            d.wait_ready()
            deadline = time.monotonic() + 60
            while d.metric("edge_agent_spool_messages") < 3:
                assert time.monotonic() < deadline, d.output()
                time.sleep(0.2)
            spool_files = sorted((gw / "spool").rglob("*"))
            spool_copy = {p: p.read_bytes() for p in spool_files if p.is_file()}
            broker.start()
            sub = Collector(broker)
            sent: list[bytes] = []                           # every message the gateway published
            sub.c.on_message = lambda c, u, m: (sent.append(m.payload), sub.q.put((m.topic, m.payload)))
            sub.results(3, timeout=60)
            (gw / "metrics.txt").write_bytes(urllib.request.urlopen(
                f"http://127.0.0.1:{d.metrics_port}/metrics", timeout=5).read())
            assert d.terminate() < 10
            sub.close()
        finally:
            d.close()
            broker.stop()
    gateway_files = [p for p in gw.rglob("*") if p.is_file() and not p.is_socket()]
    names = {p.name for p in gateway_files}
    assert {"model.bundle", "edge.yaml", "daemon.log", "metrics.txt"} <= names, names
    assert spool_copy, "nothing was spooled"
    assert (gw / "state").exists() and any((gw / "state").iterdir())
    for p, data in spool_copy.items():                         # spooled files are gone now: scan the copies
        (tmp_path / "spool-copy").mkdir(exist_ok=True)
        (tmp_path / "spool-copy" / p.name).write_bytes(data)
    scanned = gateway_files + sorted((tmp_path / "spool-copy").iterdir()) + [owner.public_key]
    assert len(sent) >= 3
    assert scan(scanned, sent, secret) == []
    # the scan itself works: the owner's store, where the key lives, is found
    stored = [p for p in owner.store.rglob("*") if p.is_file()]
    assert scan(stored, [], secret), "the scanner does not find the key where it is"


def _unit(name: str) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    cp.optionxform = str
    cp.read_string((REPO / "systemd" / name).read_text())
    return cp


def test_systemd_units_give_the_secret_key_to_the_backend_only():
    edge_text = "\n".join(line for line in (REPO / "systemd/edge-agent.service").read_text().splitlines()
                          if not line.startswith("#"))
    backend = _unit("backend-decryptor.service")["Service"]
    edge = _unit("edge-agent.service")["Service"]
    # the backend: store (secret keys) in its own private state directory, nobody else can read it
    assert backend["StateDirectory"] == "backend-decryptor" and backend["StateDirectoryMode"] == "0700"
    assert backend["DynamicUser"] == "yes" and backend["UMask"] == "0077"
    assert "/var/lib/backend-decryptor" in (REPO / "configs/backend.yaml").read_text()
    # the gateway: no path to the store or the backend's state or config, a different dynamic user
    for forbidden in ("backend-decryptor", "/var/lib/backend", "/etc/backend-decryptor", "store"):
        assert forbidden not in edge_text, forbidden
    assert edge["DynamicUser"] == "yes" and edge["StateDirectory"] == "edge-agent"
    assert edge["ProtectSystem"] == "strict" and edge["ProtectHome"] == "yes"
    for option in ("ReadWritePaths", "BindPaths", "BindReadOnlyPaths", "SupplementaryGroups", "User"):
        assert option not in edge, option
    edge_config = "\n".join(line.split("#")[0] for line in (REPO / "configs/edge.yaml").read_text().splitlines())
    assert "backend-decryptor" not in edge_config and "store" not in edge_config
