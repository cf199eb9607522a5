"""Gateway configuration: every error names file, line and field; check-config prints them all."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.config import ConfigError, load_config, read_password, read_signing_key
from tests.support.gateway_keys import key_for, write_key

REPO = Path(__file__).resolve().parents[2]

GOOD = """\
gateway_id: gw-1
bundle: model.bundle
owner_public_key: owner.pub
signing_key_file: signing.key
cameras:
  - id: cam1
    url: rtsp://127.0.0.1:8554/cam
mqtt:
  host: 127.0.0.1
  username: gw
  password_file: pw.txt
"""


@pytest.fixture
def cfg_dir(tmp_path):
    (tmp_path / "owner.pub").write_text("placeholder")
    (tmp_path / "pw.txt").write_text("s3cret\n")
    write_key(tmp_path / "signing.key", "gw-1")
    return tmp_path


def write(cfg_dir: Path, text: str) -> Path:
    p = cfg_dir / "edge.yaml"
    p.write_text(text)
    return p


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    return exc.value.problems


def test_good_config_resolves_paths_and_defaults(cfg_dir):
    cfg = load_config(write(cfg_dir, GOOD))
    assert cfg.bundle == cfg_dir / "model.bundle"          # relative to the config file
    assert cfg.mqtt.qos == 1 and cfg.mqtt.topic_prefix == "fhe-edge"
    assert cfg.workers >= 1 and cfg.cameras[0].max_fps == 1.0
    assert read_password(cfg.mqtt) == "s3cret"
    assert cfg.signing_key_file == cfg_dir / "signing.key"
    assert read_signing_key(cfg).public_key() == key_for("gw-1").public_key()


def test_signing_key_is_required_and_must_be_private(cfg_dir):
    found = problems(write(cfg_dir, GOOD.replace("signing_key_file: signing.key\n", "")))
    assert any("signing_key_file or signing_key_credential" in p for p in found), found
    found = problems(write(cfg_dir, GOOD.replace("signing_key_file: signing.key",
                                                 "signing_key_file: signing.key\nsigning_key_credential: k")))
    assert any("exactly one of" in p for p in found), found
    (cfg_dir / "signing.key").chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others.*chmod 600"):
        read_signing_key(load_config(write(cfg_dir, GOOD)))
    (cfg_dir / "signing.key").chmod(0o600)
    (cfg_dir / "signing.key").write_text("not a key")
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
        read_signing_key(load_config(write(cfg_dir, GOOD)))


def test_keygen_writes_a_private_key_0600_and_prints_the_backend_line(tmp_path):
    out = tmp_path / "signing.key"
    run = subprocess.run([sys.executable, "-m", "edge_agent.cli", "keygen", "--out", str(out), "--gateway-id",
                          "gw-7"], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    from protected_nn.gateway_key import load_private_key, parse_public_key, public_key_text
    line = [ln for ln in run.stdout.splitlines() if ln.strip().startswith("gw-7: ed25519:")]
    assert line, run.stdout
    public = line[0].split(": ", 1)[1]
    assert public_key_text(load_private_key(out)) == public == (tmp_path / "signing.key.pub").read_text().strip()
    parse_public_key(public)
    again = subprocess.run([sys.executable, "-m", "edge_agent.cli", "keygen", "--out", str(out)],
                           capture_output=True, text=True, cwd=REPO)
    assert again.returncode == 2 and "already exists" in again.stderr     # a key is never silently replaced


def test_every_error_has_file_line_and_field(cfg_dir):
    text = GOOD.replace("    url: rtsp://127.0.0.1:8554/cam",
                        "    url: http://127.0.0.1/cam\n    fps: 3\n  - id: bad id!\n    url: rtsp://h/x")
    text += "  port: 70000\nworkerz: 2\n"
    path = write(cfg_dir, text)
    found = problems(path)
    lines = text.splitlines()
    expected = {
        "cameras[0].url": "url: http://", "cameras[0].fps": "fps: 3",
        "cameras[1].id": "- id: bad id!", "mqtt.port": "port: 70000", "workerz": "workerz: 2"}
    assert len(found) == len(expected), found
    for field, line_text in expected.items():
        line_no = next(i + 1 for i, l in enumerate(lines) if line_text in l)
        assert any(p.startswith(f"{path}:{line_no}: {field}: ") for p in found), (field, found)
    assert any("unknown setting" in p for p in found if ": workerz:" in p)


def test_missing_field_and_missing_file(cfg_dir):
    path = write(cfg_dir, GOOD.replace("owner_public_key: owner.pub", "owner_public_key: nope.pub")
                 .replace("  host: 127.0.0.1\n", ""))
    found = problems(path)
    assert any(": owner_public_key: file " in p and "nope.pub" in p for p in found), found
    assert any(": mqtt.host: Field required" in p for p in found), found


def test_cross_field_rules(cfg_dir):
    text = GOOD.replace("  password_file: pw.txt", "  password_file: pw.txt\n  password_credential: x")
    text = text.replace("mqtt:", "  - id: cam1\n    url: rtsp://h/y\nmqtt:")
    found = problems(write(cfg_dir, text))
    assert any(": mqtt: give password_file or password_credential, not both" in p for p in found), found
    assert any(": cameras: camera id 'cam1' appears twice" in p for p in found), found


def test_yaml_syntax_error_names_line(cfg_dir):
    path = write(cfg_dir, GOOD.replace("mqtt:\n", "mqtt: [\n"))
    (p,) = problems(path)
    assert p.startswith(f"{path}:") and "YAML syntax" in p


def test_systemd_credential_password(cfg_dir, monkeypatch):
    cred = cfg_dir / "creds"
    cred.mkdir()
    (cred / "mqtt-password").write_text("from-systemd")
    cfg = load_config(write(cfg_dir, GOOD.replace("password_file: pw.txt", "password_credential: mqtt-password")))
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY"):
        read_password(cfg.mqtt)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(cred))
    assert read_password(cfg.mqtt) == "from-systemd"


def test_shipped_example_is_valid_except_for_absent_files():
    """configs/edge.yaml refers to /etc files that do not exist here: those must be the only errors."""
    found = problems(REPO / "configs" / "edge.yaml")
    assert found and all("does not exist" in p for p in found), found


def test_check_config_cli_prints_all_errors(cfg_dir):
    path = write(cfg_dir, GOOD.replace("gateway_id: gw-1", "gateway_id: gw 1") + "extra: 1\n")
    run = subprocess.run([sys.executable, "-m", "edge_agent.cli", "check-config", str(path)],
                         capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 2
    errs = run.stderr.strip().splitlines()
    assert len(errs) == 2, run.stderr
    assert errs[0].startswith(f"error: {path}:1: gateway_id: ")
    assert errs[1].startswith(f"error: {path}:12: extra: unknown setting")
