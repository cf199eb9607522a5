"""A Mosquitto that only takes TLS clients with a password: a private CA and a broker certificate
for 127.0.0.1 made here, password file entries for `backend` (s3cret-pw) and `gw-1` (gw-pw).
The tests get it as the `broker` fixture of kind "tls" (tests/conftest.py); `broker.certs` is the
folder holding ca.pem."""
from __future__ import annotations

import datetime
import ipaddress
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.mosquitto import Mosquitto


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


def tls_broker(folder: Path) -> Mosquitto:
    """The broker, not started; its certificates and password file in `folder` (= `.certs`)."""
    ca_key, srv_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test-ca", ca_key, None, ca_key, ca=True)
    srv = _cert("127.0.0.1", srv_key, ca.subject, ca_key, ca=False)
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    (folder / "server.pem").write_bytes(srv.public_bytes(pem))
    (folder / "server.key").write_bytes(srv_key.private_bytes(
        pem, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(folder / "passwd"), "backend", "s3cret-pw"], check=True)
    subprocess.run(["mosquitto_passwd", "-b", str(folder / "passwd"), "gw-1", "gw-pw"], check=True)
    for f in folder.iterdir():
        f.chmod(0o644)  # the broker may drop root privileges before reading them
    folder.chmod(0o755)
    listener = (f"allow_anonymous false\npassword_file {folder / 'passwd'}\ncafile {folder / 'ca.pem'}\n"
                f"certfile {folder / 'server.pem'}\nkeyfile {folder / 'server.key'}\n")
    broker = Mosquitto(listener_config=listener)
    broker.certs = folder
    return broker
