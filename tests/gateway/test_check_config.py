"""`edge-agent check-config` checks what `run` needs, and `run` fails on a missing secret with one
`error:` line before it opens anything (issue 16; issue 12: unreadable password file)."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edge_agent.check_config import capacity_warnings, memory_max
from edge_agent.config import ConfigError, load_config
from tests.support.gateway_keys import write_key
from tests.support.mosquitto import free_port
from tests.support.tiny_models import signed_bundle

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("owner")
    signed_bundle(d)
    return d


@pytest.fixture
def gateway(tmp_path, bundle_dir):
    """A valid gateway folder; `write(**changes)` writes edge.yaml and returns its path."""
    for name in ("model.bundle", "owner.pub"):
        shutil.copy(bundle_dir / name, tmp_path / name)
    write_key(tmp_path / "signing.key", "gw-1")
    (tmp_path / "pw.txt").write_text("s3cret\n")
    base = {"gateway_id": "gw-1", "bundle": "model.bundle", "owner_public_key": "owner.pub",
            "signing_key_file": "signing.key", "state_dir": "state", "spool": {"directory": "state/spool"},
            "cameras": [{"id": "cam1", "url": "rtsp://127.0.0.1:8554/cam"}],
            "mqtt": {"host": "127.0.0.1", "username": "gw", "password_file": "pw.txt"},
            "metrics_address": f"127.0.0.1:{free_port()}", "workers": 1}

    def write(mqtt=None, **changes):
        cfg = {**base, **changes, "mqtt": {**base["mqtt"], **(mqtt or {})}}
        cfg["mqtt"] = {k: v for k, v in cfg["mqtt"].items() if v is not None}
        path = tmp_path / "edge.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path
    return write


def line_of(path: Path, key: str) -> int:
    """1-based line of the first `key:` in the file (keys are unique in these configs)."""
    return next(i for i, text in enumerate(Path(path).read_text().splitlines(), 1)
                if text.strip().startswith(f"{key}:"))


def edge(*args, env=None):
    environ = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    return subprocess.run([sys.executable, "-m", "edge_agent.cli", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120, env={**environ, **(env or {})})


def test_a_valid_config_passes(gateway):
    out = edge("check-config", str(gateway()))
    assert out.returncode == 0, out.stderr
    assert "ok - gateway gw-1" in out.stdout and "error" not in out.stderr
    assert re.search(r"1 worker\(s\) \(each ~\d+ MiB, \d+\.\d\d s per inference, measured\)", out.stdout)


def test_a_taken_metrics_port_is_named_with_its_field(gateway):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        address = f"127.0.0.1:{s.getsockname()[1]}"
        path = gateway(metrics_address=address)
        out = edge("check-config", str(path))
        assert out.returncode == 2
        assert f"metrics_address {address}: address already in use" in out.stderr
        out = edge("run", "--config", str(path))              # `run` names it too, before starting
        assert out.returncode == 2 and "Traceback" not in out.stderr
        assert out.stderr.strip().splitlines() == [
            f"error: {path}:{line_of(path, 'metrics_address')}: metrics_address {address}: address already in use"]


def test_the_bundle_pin_run_applies_is_checked(gateway, tmp_path):
    out = edge("check-config", str(gateway(model_id="another-model")))
    assert out.returncode == 2 and "bundle is for model 'tiny', not 'another-model'" in out.stderr
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "bundle.json").write_text(json.dumps({"model_id": "tiny", "versions": {"tiny": 3}}))
    out = edge("check-config", str(gateway()))
    assert out.returncode == 2 and "version 1, older than version 3" in out.stderr


def test_run_without_credentials_directory_is_one_error_line(gateway):
    path = gateway(mqtt={"password_file": None, "password_credential": "mqtt-password"})
    out = edge("run", "--config", str(path))
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        f"error: {path}:{line_of(path, 'password_credential')}: mqtt.password_credential: 'mqtt-password' set "
        "but $CREDENTIALS_DIRECTORY is not (run under systemd with LoadCredential=)"]
    # check-config says what it could not check instead of failing a config meant for systemd
    out = edge("check-config", str(path))
    assert out.returncode == 0
    assert "mqtt.password_credential 'mqtt-password': checked only under systemd" in out.stderr


def test_run_with_an_unreadable_password_is_one_error_line_before_the_metrics_port(gateway, tmp_path):
    creds = tmp_path / "creds"
    creds.mkdir()                                  # the credential is missing from the directory
    port = free_port()
    path = gateway(mqtt={"password_file": None, "password_credential": "mqtt-password"},
                   metrics_address=f"127.0.0.1:{port}")
    out = edge("run", "--config", str(path), env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines == [f"error: {path}:{line_of(path, 'password_credential')}: mqtt.password_credential "
                     f"{creds / 'mqtt-password'}: cannot read: No such file or directory"]
    assert "metrics on" not in out.stderr


def test_unreadable_files_name_field_and_path(gateway, tmp_path):
    (tmp_path / "ca.crt").mkdir()                  # exists, but cannot be read as a file
    out = edge("check-config", str(gateway(bundle=str(tmp_path / "ca.crt"))))
    assert out.returncode == 2
    assert f"{line_of(tmp_path / 'edge.yaml', 'bundle')}: bundle {tmp_path / 'ca.crt'}: cannot read: Is a directory" \
        in out.stderr


def test_risky_values_warn(gateway):
    out = edge("check-config", str(gateway(mqtt={"host": "broker.example.org"},
                                           cameras=[{"id": f"c{i}", "url": "rtsp://h/s", "max_fps": 60}
                                                    for i in range(4)])))
    assert out.returncode == 0, out.stderr
    assert "warning:" in out.stderr and "no tls: section for broker broker.example.org" in out.stderr
    assert "max_fps adds up to 240 frames/s" in out.stderr


def test_memory_over_the_units_memory_max_warns(gateway):
    assert memory_max() == 3 << 30                      # systemd/edge-agent.service MemoryMax=3G
    cfg = load_config(gateway(workers=4))
    (warning,) = capacity_warnings(cfg, per_worker=1 << 30, seconds=0.1, limit=memory_max())
    assert "4 worker(s) x 1024 MiB" in warning and "MemoryMax=3G: set workers: 3" in warning
    assert capacity_warnings(cfg, per_worker=100 << 20, seconds=0.1, limit=memory_max()) == []


@pytest.mark.parametrize("mqtt,message", [
    ({"host": "mqtts://broker.example.org"}, "give the host name; TLS is the tls: section"),
    ({"password_file": None}, "username 'gw' without a password"),
])
def test_refused_broker_settings(gateway, mqtt, message):
    with pytest.raises(ConfigError) as exc:
        load_config(gateway(mqtt=mqtt))
    assert message in str(exc.value)


def test_durations_with_units_and_typo_suggestions(gateway, tmp_path):
    cfg = load_config(gateway(mqtt={"resume_delay_s": "5s"}, capture={"reconnect_max_s": "2m"},
                              bundle_poll_s="500ms"))
    assert cfg.mqtt.resume_delay_s == 5 and cfg.capture.reconnect_max_s == 120 and cfg.bundle_poll_s == 0.5
    path = gateway()
    path.write_text(path.read_text().replace("gateway_id:", "gatway_id:"))
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert len(exc.value.problems) == 1, exc.value.problems
    assert exc.value.problems[0].endswith("gatway_id: unknown setting 'gatway_id' - did you mean 'gateway_id'?")
