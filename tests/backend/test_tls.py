"""The service connects over TLS (CA-verified broker certificate) with a user name and a password
read from a file, to a real Mosquitto that refuses anonymous clients; a wrong password leaves it
retrying without crashing. Plumbing test: IdentityCodec stand-in decryptor (see tests/support/backend.py)."""
from __future__ import annotations

import shutil
import ssl
import threading

import paho.mqtt.client as mqtt
import pytest

from backend_decryptor.service import Service
from tests.support.backend import IdentityCodec, catalog, config, handled, message, rules, wait_for

pytestmark = [pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="mosquitto_passwd missing"),
              pytest.mark.broker("tls")]


def gateway_client(broker, ca):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.tls_set(ca_certs=str(ca), cert_reqs=ssl.CERT_REQUIRED)
    c.username_pw_set("gw-1", "gw-pw")
    up = threading.Event()
    c.on_connect = lambda *a: up.set()
    c.connect(broker.host, broker.port)
    c.loop_start()
    assert up.wait(10)
    return c


def test_tls_and_password_file(broker, tmp_path):
    certs = broker.certs
    (tmp_path / "pw").write_text("s3cret-pw\n")
    cfg = config(tmp_path, broker, mqtt={"tls": {"ca_file": str(certs / "ca.pem")}, "username": "backend",
                                         "password_file": str(tmp_path / "pw")})
    svc = Service(cfg, rules(), catalog=catalog(), decryptor=IdentityCodec()).start()
    gw = gateway_client(broker, certs / "ca.pem")
    try:
        assert svc.receiver.connected.is_set()
        gw.publish(*message(1), qos=1).wait_for_publish(10)
        wait_for(lambda: handled(svc) >= 1)
        assert svc.metrics.value("backend_messages_processed") == 1
    finally:
        gw.disconnect()
        gw.loop_stop()
        svc.stop()


def test_wrong_password_is_refused_without_crashing(broker, tmp_path):
    certs = broker.certs
    (tmp_path / "pw").write_text("wrong\n")
    cfg = config(tmp_path, broker, mqtt={"tls": {"ca_file": str(certs / "ca.pem")}, "username": "backend",
                                         "password_file": str(tmp_path / "pw")})
    svc = Service(cfg, rules(), catalog=catalog(), decryptor=IdentityCodec()).start(connect_timeout=3)
    try:
        assert not svc.receiver.connected.is_set()
        assert svc.pipeline.thread.is_alive()
    finally:
        svc.stop()
