"""systemd/backend-decryptor.service: `systemd-analyze verify` (with the install prefix pointed at
this checkout so the ExecStart binaries exist) and the hardening the issue asks for."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "backend-decryptor.service"
REPO = UNIT.parent.parent


def directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_verifies(tmp_path):
    if not (REPO / ".venv" / "bin" / "backend-decryptor").exists():
        pytest.skip("the backend-decryptor entry point is not installed in .venv")
    unit = tmp_path / "backend-decryptor.service"
    unit.write_text(UNIT.read_text().replace("/opt/fhe-edge", str(REPO)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "backend-decryptor.service" not in result.stdout + result.stderr, result.stdout + result.stderr


def test_unit_is_hardened_and_keeps_state_and_secrets_where_asked():
    d = directives()
    assert d["Type"] == ["notify"] and d["WatchdogSec"]
    assert d["ProtectSystem"] == ["strict"] and d["NoNewPrivileges"] == ["yes"]
    assert d["StateDirectory"] == ["backend-decryptor"] and d["DynamicUser"] == ["yes"]
    assert any(v.startswith("mqtt-password:") for v in d["LoadCredential"])
    assert d["CapabilityBoundingSet"] == [""]
    assert "run --config" in d["ExecStart"][0]
    # stop budget: the service stops within 10 s, systemd waits a little longer before SIGKILL
    assert int(d["TimeoutStopSec"][0]) > 10
