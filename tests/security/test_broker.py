"""The locked-down broker: a real Mosquitto started with configs/mosquitto/mosquitto.conf and
configs/mosquitto/acl exactly as shipped (only the install folder and the port are rewritten), TLS
certificates from scripts/gen-broker-certs.sh, passwords hashed by mosquitto_passwd.

Denied publishes are silently dropped by Mosquitto, so every "never arrives" check publishes an
allowed message right after the forbidden one on the same connection and waits for that one: once
the allowed message is in, the forbidden one would have been too (one connection, in order)."""
from __future__ import annotations

import json
import os
import queue
import shutil
import ssl
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.locked_broker import USERS, Client

MAX_PACKET = 4259840                 # mosquitto.conf max_packet_size

pytestmark = [pytest.mark.skipif(not shutil.which("mosquitto_passwd"), reason="mosquitto not installed"),
              pytest.mark.broker("locked")]


def test_wrong_password_unknown_user_and_anonymous_are_refused(broker):
    for user, password in [("gw-1", "wrong"), ("backend", "g1-secret"), ("nobody", "x"), (None, None)]:
        c = Client(broker, user, password)
        try:
            assert not c.ok, f"{user}/{password} was let in"
            assert c.rc is not None and c.rc.is_failure and c.rc.value in (0x86, 0x87), c.rc
        finally:
            c.close()
    good = Client(broker, "gw-1")
    assert good.ok, broker.log()
    good.close()


def test_tls_without_the_ca_and_plain_tcp_fail(broker):
    c = Client(broker, "gw-1", ca=None)          # system CAs only: the private CA is unknown
    assert isinstance(c.error, ssl.SSLCertVerificationError), c.error
    plain = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    plain.username_pw_set("gw-1", USERS["gw-1"])
    rcs: queue.Queue = queue.Queue()
    plain.on_connect = lambda cl, u, f, rc, p: rcs.put(rc)
    plain.connect(broker.host, broker.port)
    plain.loop_start()
    try:
        with pytest.raises(queue.Empty):
            rcs.get(timeout=2)                   # the TLS listener never answers a plain CONNECT
    finally:
        plain.loop_stop()


def test_a_gateway_cannot_publish_as_another_gateway_or_outside_its_topics(broker):
    backend = Client(broker, "backend", subscribe=["$share/backend/fhe-edge/infer/+/+"])
    dashboard = Client(broker, "dashboard", subscribe=["fhe-edge/alerts/#", "fhe-edge/state/#"])
    gw1 = Client(broker, "gw-1")
    try:
        assert backend.ok and all(not rc.is_failure for rc in backend.suback), backend.suback
        gw1.publish("fhe-edge/infer/gw-2/cam-1", b"forged-as-gw-2")
        gw1.publish("fhe-edge/infer/gw-1/cam-1/extra", b"deeper-level")
        gw1.publish("fhe-edge/alerts/cam-1", b"forged-alert")
        gw1.publish("fhe-edge/state/cam-1", b"forged-state")
        gw1.publish("fhe-edge/status/gw-2/cam-1", b"forged-status")
        gw1.publish("fhe-edge/infer/gw-1/cam-1", b"own-result")
        got = backend.received(until=b"own-result")
        assert got == [("fhe-edge/infer/gw-1/cam-1", b"own-result")], got
        assert dashboard.nothing_received(0.5) == []
    finally:
        for c in (backend, dashboard, gw1):
            c.close()


def test_a_gateway_reads_nothing_no_alerts_no_state_no_other_results(broker):
    gw1 = Client(broker, "gw-1", subscribe=["fhe-edge/#", "fhe-edge/alerts/#", "fhe-edge/infer/gw-2/#", "#"])
    dashboard = Client(broker, "dashboard", subscribe=["fhe-edge/alerts/#"])
    backend = Client(broker, "backend")
    gw2 = Client(broker, "gw-2")
    try:
        gw2.publish("fhe-edge/infer/gw-2/cam-9", b"gw-2 result")
        gw2.publish("fhe-edge/status/gw-2/cam-9", b"online")
        backend.publish("fhe-edge/state/cam-9", b'{"crowd": "high"}')
        backend.publish("fhe-edge/alerts/cam-9", b'{"type": "crowd"}')
        assert dashboard.received(until=b'{"type": "crowd"}')         # the alert was delivered...
        assert gw1.nothing_received(0.5) == []                           # ...but not to the gateway
    finally:
        for c in (gw1, dashboard, backend, gw2):
            c.close()


def test_dashboards_cannot_publish_and_the_backend_can_alert(broker):
    watcher = Client(broker, "dashboard", subscribe=["fhe-edge/alerts/#", "fhe-edge/state/#"])
    backend = Client(broker, "backend", subscribe=["$share/backend/fhe-edge/infer/+/+"])
    dash = Client(broker, "dashboard")
    try:
        dash.publish("fhe-edge/alerts/cam-1", b"fake alert")
        dash.publish("fhe-edge/state/cam-1", b"fake state")
        dash.publish("fhe-edge/infer/dashboard/cam-1", b"fake result")   # the %u patterns' reserved name
        dash.publish("fhe-edge/infer/gw-1/cam-1", b"fake gw-1 result")
        backend.publish("fhe-edge/alerts/cam-1", b"real alert")
        assert watcher.received(until=b"real alert") == [("fhe-edge/alerts/cam-1", b"real alert")]
        gw1 = Client(broker, "gw-1")
        gw1.publish("fhe-edge/infer/gw-1/cam-1", b"barrier")
        gw1.close()
        assert backend.received(until=b"barrier") == [("fhe-edge/infer/gw-1/cam-1", b"barrier")]
    finally:
        for c in (watcher, backend, dash):
            c.close()


def test_the_backend_service_runs_against_the_locked_broker(broker, tmp_path):
    """The real Receiver (shared subscription, last will, TLS, password file) is allowed what it
    needs: it subscribes, receives a gateway's message and publishes its availability."""
    from backend_decryptor.service import Service
    from tests.support.backend import IdentityCodec, catalog, config, handled, message, rules, wait_for
    (tmp_path / "pw").write_text(USERS["backend"] + "\n")
    cfg = config(tmp_path, broker, client_id="backend-tls",
                 mqtt={"tls": {"ca_file": str(broker.root / "ca.crt")}, "username": "backend",
                       "password_file": str(tmp_path / "pw")})
    watcher = Client(broker, "dashboard", subscribe=["fhe-edge/alerts/#"])
    svc = Service(cfg, rules(), catalog=catalog(), decryptor=IdentityCodec()).start()
    gw = Client(broker, "gw-1")
    try:
        assert svc.receiver.wait_connected(10), broker.log()
        for seq in range(3):
            gw.publish(*message(seq, count=50.0, gateway="gw-1", camera="cam-1"))
        wait_for(lambda: handled(svc) >= 3, timeout=20, what="3 messages through the locked broker")
        assert svc.metrics.value("backend_messages_processed") == 3
        topic, payload = watcher.q.get(timeout=10)      # the crowd alert reached the dashboard
        assert topic == "fhe-edge/alerts/cam-1" and json.loads(payload)["event"] == "raised"
    finally:
        svc.stop()
        gw.close()
        watcher.close()


def _retained(broker, user: str, filters: list[str], wait: float = 2.0) -> list[str]:
    """Topics of the retained messages a fresh subscriber of `filters` gets."""
    c = Client(broker, user, subscribe=filters)
    try:
        assert all(not rc.is_failure for rc in c.suback), c.suback
        return sorted(t for t, _ in c.nothing_received(wait))
    finally:
        c.close()


def test_a_gateway_cannot_fill_the_broker_with_retained_messages(broker):
    """Issue 15 item 6: 40 retained 3 MB messages under topics a gateway might invent would keep
    120 MB in the broker; only its exact topics take a retained message, and nothing larger than
    max_packet_size gets in at all."""
    big = os.urandom(3 << 20)
    before = broker.rss()
    gw = Client(broker, "gw-1")
    try:
        for i in range(40):
            topic = (f"fhe-edge/status/gw-1/cam-x{i}", f"fhe-edge/gateway/gw-1/x{i}",
                     f"fhe-edge/infer/gw-1/cam-x{i}", f"fhe-edge/gateway/gw-1/stats/x{i}")[i % 4]
            gw.publish(topic, big, retain=True)
        # Its own exact topics do keep one retained message each: that is the bound.
        for topic in ("fhe-edge/infer/gw-1/cam-1", "fhe-edge/gateway/gw-1/stats"):
            gw.publish(topic, big, retain=True)
        gw.publish("fhe-edge/status/gw-1/cam-1", b"online", retain=True)
        gw.publish("fhe-edge/gateway/gw-1/availability", b"online", retain=True)
    finally:
        gw.close()
    grown = broker.rss() - before
    print(f"broker RSS grew by {grown / 2**20:.1f} MiB")
    assert grown < 30 << 20, f"broker grew by {grown / 2**20:.0f} MiB"
    assert _retained(broker, "dashboard", ["fhe-edge/status/#", "fhe-edge/gateway/+/stats",
                                           "fhe-edge/gateway/+/availability"]) == [
        "fhe-edge/gateway/gw-1/availability", "fhe-edge/gateway/gw-1/stats", "fhe-edge/status/gw-1/cam-1"]
    assert _retained(broker, "backend", ["fhe-edge/infer/#"]) == ["fhe-edge/infer/gw-1/cam-1"]
    # Above max_packet_size: the gateway is disconnected and nothing is kept.
    gw = Client(broker, "gw-1")
    try:
        gw.c.publish("fhe-edge/status/gw-1/cam-1", os.urandom(MAX_PACKET + 1), qos=1, retain=True)
        deadline = time.monotonic() + 10
        while gw.c.is_connected() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not gw.c.is_connected(), "a packet above max_packet_size was accepted"
    finally:
        gw.close()
    got = Client(broker, "dashboard", subscribe=["fhe-edge/status/#"])
    try:
        assert [p for _, p in got.nothing_received(2.0)] == [b"online"]   # still the small one
    finally:
        got.close()
    for topic in ("fhe-edge/infer/gw-1/cam-1", "fhe-edge/gateway/gw-1/stats"):   # leave the broker clean
        clean = Client(broker, "gw-1")
        clean.publish(topic, b"", retain=True)
        clean.close()


def test_dashboards_see_availability_and_camera_status_but_no_results(broker):
    """Issue 16: a control room can show camera offline, gateway down, backend down."""
    dash = Client(broker, "dashboard", subscribe=["fhe-edge/status/#", "fhe-edge/gateway/+/availability",
                                                  "fhe-edge/gateway/+/stats", "fhe-edge/backend/+/availability",
                                                  "fhe-edge/infer/#"])
    gw, backend = Client(broker, "gw-2"), Client(broker, "backend")
    try:
        gw.publish("fhe-edge/infer/gw-2/cam-9", b"result")
        gw.publish("fhe-edge/status/gw-2/cam-9", b"offline")
        gw.publish("fhe-edge/gateway/gw-2/stats", b'{"fps": 1}')
        backend.publish("fhe-edge/backend/b-1/availability", b"offline-b")
        gw.publish("fhe-edge/gateway/gw-2/availability", b"offline")
        got = dash.received(until=b"offline-b")
        got += dash.received(until=b"offline")
        assert not [t for t, _ in got if "/infer/" in t], got
        fresh = sorted(t for t, _ in got if "gw-2" in t or "b-1" in t)      # not earlier tests' retained ones
        assert fresh == ["fhe-edge/backend/b-1/availability", "fhe-edge/gateway/gw-2/availability",
                         "fhe-edge/gateway/gw-2/stats", "fhe-edge/status/gw-2/cam-9"], got
        dash.publish("fhe-edge/gateway/dashboard/availability", b"x")    # the %u pattern's reserved name
        gw.publish("fhe-edge/gateway/gw-2/availability", b"online")
        assert [p for _, p in dash.received(until=b"online")] == [b"online"]
    finally:
        for c in (dash, gw, backend):
            c.close()
