"""The service connects over TLS (CA-verified broker certificate) with a user name and a password
read from a file, to a real Mosquitto that refuses anonymous clients; a wrong password leaves it
retrying without crashing. Plumbing test: IdentityCodec stand-in decryptor (see test_backend_support)."""
from __future__ import annotations

import datetime
import ipaddress
import shutil
import ssl
import subprocess
import threading

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from backend_decryptor.service import Service
from tests.support.mosquitto import Mosquitto
from tests.support.backend import IdentityCodec, catalog, config, handled, message, rules, wait_for

pytestmark = pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="mosquitto_passwd missing")


def _cert(subject: str, key, issuer_name, issuer_key, ca: bool):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(issuer_name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture
def tls_broker(tmp_path):
    ca_key, srv_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test-ca", ca_key, None, ca_key, ca=True)
    srv = _cert("127.0.0.1", srv_key, ca.subject, ca_key, ca=False)
    pem = serialization.Encoding.PEM
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(pem))
    (tmp_path / "server.pem").write_bytes(srv.public_bytes(pem))
    (tmp_path / "server.key").write_bytes(srv_key.private_bytes(
        pem, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(tmp_path / "passwd"), "backend", "s3cret-pw"], check=True)
    subprocess.run(["mosquitto_passwd", "-b", str(tmp_path / "passwd"), "gw-1", "gw-pw"], check=True)
    for f in tmp_path.iterdir():
        f.chmod(0o644)  # the broker may drop root privileges before reading them
    tmp_path.chmod(0o755)
    listener = (f"allow_anonymous false\npassword_file {tmp_path / 'passwd'}\ncafile {tmp_path / 'ca.pem'}\n"
                f"certfile {tmp_path / 'server.pem'}\nkeyfile {tmp_path / 'server.key'}\n")
    with Mosquitto(listener_config=listener) as broker:
        yield broker, tmp_path


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


def test_tls_and_password_file(tls_broker, tmp_path):
    broker, certs = tls_broker
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


def test_wrong_password_is_refused_without_crashing(tls_broker, tmp_path):
    broker, certs = tls_broker
    (tmp_path / "pw").write_text("wrong\n")
    cfg = config(tmp_path, broker, mqtt={"tls": {"ca_file": str(certs / "ca.pem")}, "username": "backend",
                                         "password_file": str(tmp_path / "pw")})
    svc = Service(cfg, rules(), catalog=catalog(), decryptor=IdentityCodec()).start(connect_timeout=3)
    try:
        assert not svc.receiver.connected.is_set()
        assert svc.pipeline.thread.is_alive()
    finally:
        svc.stop()
