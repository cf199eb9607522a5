"""The gateway daemon as a subprocess, with real parts: GStreamer RTSP camera, Mosquitto, the
encrypted model (a tiny ONNX protected with protected_nn.api) and the owner-side decryption.

Skipped until protected_nn.api.protect works (it starts running by itself once it does)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from protected_nn import bundle
from tests.support.edge_daemon import Collector, Daemon, protected_owner
from tests.support.rtsp_camera import gstreamer_available

REPO = Path(__file__).resolve().parents[2]
# "persistent": the broker keeps sessions across a restart, so the Collector misses nothing
pytestmark = [pytest.mark.skipif(not gstreamer_available(), reason="GStreamer RTSP server not installed"),
              pytest.mark.broker("persistent")]


@pytest.fixture(scope="module")
def owner():
    """Protected tiny model, owner signing key, a signed bundle factory."""
    return protected_owner()


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
