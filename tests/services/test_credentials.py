"""Mutual TLS under the units' DynamicUser: the client key is a systemd credential, named in
the config as ${CREDENTIALS_DIRECTORY}/... (issue 16: the key files were unreadable by the
dynamic user, and neither config could point at the credentials directory)."""
from __future__ import annotations

from pathlib import Path

import pytest

from backend_decryptor.config import load_config as load_backend
from edge_agent.config import ConfigError, load_config as load_edge
from tests.support.gateway_keys import write_key


@pytest.fixture
def credentials(tmp_path, monkeypatch):
    cred = tmp_path / "credentials"
    cred.mkdir()
    for name in ("ca.crt", "client.crt", "client.key"):
        (cred / name).write_text("PEM\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(cred))
    return cred


TLS = """  tls:
    ca_file: ${CREDENTIALS_DIRECTORY}/ca.crt
    cert_file: ${CREDENTIALS_DIRECTORY}/client.crt
    key_file: ${CREDENTIALS_DIRECTORY}/client.key
"""


def edge_yaml(folder: Path) -> Path:
    (folder / "model.bundle").write_bytes(b"x")
    (folder / "owner.pub").write_text("x")
    write_key(folder / "signing.key", "gw-1")
    path = folder / "edge.yaml"
    path.write_text("gateway_id: gw-1\nbundle: model.bundle\nowner_public_key: owner.pub\n"
                    "signing_key_file: signing.key\ncameras: [{id: c1, url: 'rtsp://127.0.0.1/s'}]\n"
                    "mqtt:\n  host: broker.example\n  port: 8883\n" + TLS)
    return path


def test_edge_tls_files_from_the_credentials_directory(tmp_path, credentials):
    cfg = load_edge(edge_yaml(tmp_path))
    assert cfg.mqtt.tls.key_file == credentials / "client.key"
    assert cfg.mqtt.tls.cert_file == credentials / "client.crt"


def test_edge_without_the_credentials_directory_names_what_was_written(tmp_path, credentials, monkeypatch):
    path = edge_yaml(tmp_path)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(ConfigError) as err:
        load_edge(path)
    assert "${CREDENTIALS_DIRECTORY}/client.key" in str(err.value)


def test_backend_tls_files_from_the_credentials_directory(tmp_path, credentials):
    path = tmp_path / "backend.yaml"
    path.write_text("mqtt:\n  host: broker.example\n  port: 8883\n" + TLS)
    cfg = load_backend(path)
    assert cfg.mqtt.tls.key_file == credentials / "client.key"
    assert cfg.mqtt.tls.ca_file == credentials / "ca.crt"
