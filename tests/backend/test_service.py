"""Service plumbing with a real Mosquitto: shared-subscription split, restart without loss or
re-raise, retained state for late subscribers, Home Assistant discovery, `run` + SIGTERM.

PLUMBING tests: the decryptor is the IdentityCodec stand-in (payload = float64 vector, NOT
encryption), because these test transport, queueing, persistence and rules; tests/backend/test_e2e.py
covers real encrypted results."""
from __future__ import annotations

import json
import re
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request


from backend_decryptor.service import Service
from tests.support.gateway_keys import public_keys
from tests.support.mosquitto import free_port
from tests.support.backend import (
    IdentityCodec, catalog, config, handled, message, rules, wait_for)
from tests.support.backend import MQTTTestClient as MqttClient


class SlowCodec(IdentityCodec):
    """IdentityCodec that takes 50 ms, so a stop happens with messages still in flight."""

    def decrypt(self, model_id, fingerprint, payload):
        time.sleep(0.05)
        return super().decrypt(model_id, fingerprint, payload)


def test_two_replicas_split_200_messages_none_lost_or_doubled(tmp_path, broker):
    replicas = [Service(config(tmp_path, broker, client_id=f"backend-{n}", decrypt={"workers": 1}), rules(),
                        catalog=catalog(), decryptor=IdentityCodec()).start() for n in "ab"]
    pub = MqttClient(broker)
    try:
        for seq in range(200):
            pub.publish(*message(seq, count=float(seq % 7), camera=f"cam-{seq % 4}"))
        wait_for(lambda: sum(handled(r) for r in replicas) >= 200, timeout=60, what="200 messages handled")
        time.sleep(0.5)  # a doubled delivery would show up as an extra (replayed) message now
        processed = [r.metrics.value("backend_messages_processed") for r in replicas]
        assert sum(processed) == 200, processed
        assert all(p > 0 for p in processed), f"the broker did not split the stream: {processed}"
        assert sum(handled(r) for r in replicas) == 200  # nothing rejected (no duplicates)
        counters = replicas[0].db.counters()
        assert sum(c["messages"] for c in counters.values()) == 200
        seen = replicas[0].db._conn().execute("SELECT COUNT(DISTINCT sequence) FROM seen").fetchone()[0]
        assert seen == 200
    finally:
        pub.close()
        for r in replicas:
            r.stop()


def test_restart_mid_stream_loses_nothing_and_re_raises_nothing(tmp_path, broker):
    # max_in_flight 30: even a broker that honours it hands over more than the 0.5 s drain budget
    cfg = config(tmp_path, broker, client_id="backend-r", mqtt={"max_in_flight": 30})
    watcher = MqttClient(broker, subscribe=["fhe-edge/alerts/#"])
    pub = MqttClient(broker)
    svc = Service(cfg, rules(), catalog=catalog(), decryptor=SlowCodec()).start()
    try:
        # crowd high throughout: exactly one alert, raised at the 2nd message
        sent = [pub.c.publish(*message(seq, count=15.0), qos=1) for seq in range(60)]
        for info in sent:
            info.wait_for_publish(10)
        wait_for(lambda: svc.metrics.value("backend_messages_processed") >= 10, what="first messages")
        # A stop with a short budget: the messages taken but not handled by then stay unacknowledged.
        assert svc.stop(timeout=3.5) is False
        first_run = svc.metrics.value("backend_messages_processed")
        assert first_run < 60, "the stop came too late to test anything"
        assert svc.metrics.value("backend_messages_received") > first_run, "nothing was in flight at the stop"
        for seq in range(60, 80):  # published while the service is down: queued in its session
            pub.publish(*message(seq, count=15.0))
        svc = Service(cfg, rules(), catalog=catalog(), decryptor=SlowCodec()).start()
        wait_for(lambda: first_run + handled(svc) >= 80, timeout=30, what="the rest after the restart")
        for seq in range(0, 10):  # replays of handled messages after the restart
            pub.publish(*message(seq, count=15.0))
        wait_for(lambda: first_run + handled(svc) >= 90, what="replays rejected")
        time.sleep(0.5)
        assert first_run + svc.metrics.value("backend_messages_processed") == 80
        assert svc.metrics.value("backend_messages_rejected", reason="replayed") == 10
        events = [(a.event.type, a.event.event) for a in svc.db.alerts()]
        assert events == [("crowd", "raised")]
        assert svc.db.counters()["cam-1"]["messages"] == 80
        wait_for(lambda: len(watcher.json("fhe-edge/alerts/")) >= 1)
        time.sleep(0.3)
        published = watcher.json("fhe-edge/alerts/")
        assert [(a["type"], a["event"]) for a in published] == [("crowd", "raised")]
        assert all(a.published for a in svc.db.alerts())
    finally:
        pub.close()
        watcher.close()
        svc.stop()


def test_late_subscriber_gets_retained_state_without_raw_values(tmp_path, broker):
    svc = Service(config(tmp_path, broker, alerts={"home_assistant": {"enabled": True}}), rules(),
                  catalog=catalog(), decryptor=IdentityCodec()).start()
    pub = MqttClient(broker)
    try:
        for seq in range(3):
            pub.publish(*message(seq, count=13.37, logit=4.2, camera="cam-7"))
        wait_for(lambda: handled(svc) >= 3)
        wait_for(lambda: all(a.published for a in svc.db.alerts()) and svc.db.alerts(), what="alerts acked")
        late = MqttClient(broker, subscribe=["fhe-edge/state/#", "homeassistant/#"])
        wait_for(lambda: late.json("fhe-edge/state/cam-7"), what="retained state")
        with late.lock:
            retained = [(t, p) for t, p, r in late.messages if r]
        state = json.loads(dict(retained)["fhe-edge/state/cam-7"])
        assert state["crowd"]["level"] == "high" and state["incident"]["active"] is True
        alert_ids = {a.event.type: a.event.id for a in svc.db.alerts()}
        assert state["crowd"]["alert"] == alert_ids["crowd"] and state["incident"]["alert"] == alert_ids["incident"]
        everything = b"".join(p for _, p in retained)
        # no decrypted values leave (as numbers: a timestamp such as 1796151634.256 holds "4.2")
        assert not re.search(rb"(?<![0-9.])(13\.37|4\.2)(?![0-9])", everything)
        discovery = [t for t, _ in retained if t.startswith("homeassistant/")]
        assert "homeassistant/sensor/fhe_edge_cam-7/crowd_level/config" in discovery
        assert "homeassistant/binary_sensor/fhe_edge_cam-7/incident/config" in discovery
        late.close()
    finally:
        pub.close()
        svc.stop()
    # the history CLI lists both alerts and the camera's counters
    (tmp_path / "b.yaml").write_text(f"state_db: {tmp_path / 'state.db'}\n")
    out = subprocess.run([sys.executable, "-m", "backend_decryptor.cli", "alerts", "--since", "1h",
                          "--config", str(tmp_path / "b.yaml")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if "cam-7" in line]
    assert any("crowd" in line and "raised" in line for line in lines)
    assert any("incident" in line and "raised" in line for line in lines)
    assert "camera cam-7: 3 inferences, 2 raised" in out.stdout
    out = subprocess.run([sys.executable, "-m", "backend_decryptor.cli", "alerts", "--since", "1h", "--camera",
                          "cam-0", "--json", "--config", str(tmp_path / "b.yaml")], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == ""


def test_run_command_serves_and_stops_cleanly_on_sigterm(tmp_path, broker):
    metrics_port = free_port()
    (tmp_path / "rules.yaml").write_text("crowd: {threshold: 10}\n")
    from backend_decryptor.store import Store
    Store(tmp_path / "store")  # an empty store: every model unknown
    (tmp_path / "backend.yaml").write_text(
        f"store: store\nstate_db: state.db\nmqtt: {{host: {broker.host}, port: {broker.port}, client_id: b-run}}\n"
        f"checks: {{allowed_gateways: ['gw-*'], gateway_keys: {{gw-1: '{public_keys(['gw-1'])['gw-1']}'}}, "
        f"gateway_cameras: {{gw-1: [cam-1]}}}}\n"
        f"decrypt: {{workers: 1}}\nalerts: {{rules_file: rules.yaml}}\n"
        f"metrics: {{listen: '127.0.0.1:{metrics_port}'}}\n")
    watcher = MqttClient(broker, subscribe=["fhe-edge/backend/#"])
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # stands in for systemd's notify socket
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(0.2)
    notes: list[str] = []

    def read_notes():
        while True:
            try:
                notes.append(notify.recv(4096).decode())
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
    threading.Thread(target=read_notes, daemon=True).start()
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "100000"}
    proc = subprocess.Popen([sys.executable, "-m", "backend_decryptor.cli", "run", "--config",
                             str(tmp_path / "backend.yaml")], cwd=os.getcwd(), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: (b"online" in [p for t, p, _ in list(watcher.messages)]) or proc.poll() is not None,
                 timeout=60, what="service online")
        assert proc.poll() is None, proc.stdout.read().decode()
        pub = MqttClient(broker)
        pub.publish(*message(1))  # the empty store knows no model: counted, not fatal
        pub.close()

        def scraped() -> str:
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2).read().decode()
            except OSError:
                return ""
        wait_for(lambda: 'backend_messages_rejected_total{reason="unknown_model"} 1.0' in scraped(),
                 what="rejection in /metrics")
        wait_for(lambda: "WATCHDOG=1" in notes, what="watchdog pings")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert time.monotonic() - t0 < 10
        wait_for(lambda: [p for t, p, _ in list(watcher.messages)][-1:] == [b"offline"], what="offline")
        wait_for(lambda: notes[-1:] == ["STOPPING=1"], what="STOPPING=1")
        assert notes[0].startswith("READY=1") and "WATCHDOG=1" in notes and notes[-1] == "STOPPING=1", notes
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        watcher.close()
        notify.close()
