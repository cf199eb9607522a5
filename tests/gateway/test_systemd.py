"""systemd/edge-agent.service passes `systemd-analyze verify` and keeps its promises."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "edge-agent.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_verifies(tmp_path):
    # verify insists the ExecStart binaries exist: point the install prefix at this checkout.
    unit = tmp_path / "edge-agent.service"
    unit.write_text(UNIT.read_text().replace("/opt/fhe-edge", str(REPO)))
    run = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "edge-agent.service" not in run.stderr, run.stderr     # no warnings about our unit either


def test_unit_has_the_promised_settings():
    settings = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            settings.setdefault(k.strip(), v.strip())
    assert settings["Type"] == "notify" and settings["Restart"] == "on-failure"
    assert settings["WatchdogSec"] and settings["DynamicUser"] == "yes"
    assert settings["ProtectSystem"] == "strict" and settings["NoNewPrivileges"] == "yes"
    assert settings["StateDirectory"] == "edge-agent"
    assert settings["LoadCredential"].startswith("mqtt-password:")
    assert settings["KillMode"] == "mixed"        # SIGTERM to the daemon, which stops its workers
    assert "run --config" in settings["ExecStart"]


def test_signing_key_reaches_the_service_as_a_credential_named_like_the_example_config():
    import yaml
    creds = [line.split("=", 1)[1] for line in UNIT.read_text().splitlines() if line.startswith("LoadCredential=")]
    names = {c.split(":", 1)[0]: c.split(":", 1)[1] for c in creds}
    example = yaml.safe_load((REPO / "configs" / "edge.yaml").read_text())
    assert example["signing_key_credential"] in names
    assert names[example["signing_key_credential"]].startswith("/etc/")   # root-only, not in the state dir
