"""Issue 16: `edge-agent check-config` fails where `run` would fail - a state or spool folder that
cannot be made because a file stands where a folder should be (before: check-config said ok,
`run` then said "cannot create: Not a directory")."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.gateway_keys import write_key
from tests.support.mosquitto import free_port
from tests.support.tiny_models import signed_bundle


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    d = tmp_path_factory.mktemp("gw")
    signed_bundle(d)
    write_key(d / "signing.key", "gw-1")
    (d / "a-file").write_text("not a folder")
    return d


def write(folder: Path, **changes) -> Path:
    cfg = {"gateway_id": "gw-1", "bundle": "model.bundle", "owner_public_key": "owner.pub",
           "signing_key_file": "signing.key", "state_dir": "state", "spool": {"directory": "state/spool"},
           "cameras": [{"id": "cam1", "url": "rtsp://127.0.0.1:8554/cam"}],
           "mqtt": {"host": "127.0.0.1"}, "metrics_address": f"127.0.0.1:{free_port()}", "workers": 1,
           **changes}
    path = folder / "edge.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def edge(*args, cwd: Path):
    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    return subprocess.run([sys.executable, "-m", "edge_agent.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120, env=env)


@pytest.mark.parametrize("setting, value, field", [
    ("state_dir", "a-file/state", "state_dir"),
    ("spool", {"directory": "a-file/spool"}, "spool.directory")])
def test_a_folder_run_cannot_make_is_an_error_naming_its_field(gateway, setting, value, field):
    path = write(gateway, **{setting: value})
    out = edge("check-config", "--quick", str(path), cwd=gateway)
    assert out.returncode == 2, out.stdout + out.stderr
    shown = value if isinstance(value, str) else value["directory"]
    assert f"{field} {gateway / shown}: cannot create: {gateway / 'a-file'} is not a folder" in out.stderr
    run = edge("run", "--config", str(path), cwd=gateway)     # what `run` says about the same file
    assert run.returncode == 2 and f"{field} {gateway / shown}: cannot create" in run.stderr


def test_the_same_config_with_real_folders_passes(gateway):
    out = edge("check-config", "--quick", str(write(gateway)), cwd=gateway)
    assert out.returncode == 0, out.stderr


def test_an_owner_key_that_is_not_a_key_is_named_by_its_own_setting(gateway):
    """Before: check-config blamed the `bundle:` line, `run` named no setting at all."""
    path = write(gateway, owner_public_key="a-file")
    line = next(i for i, t in enumerate(path.read_text().splitlines(), 1) if t.startswith("owner_public_key:"))
    for args in (["check-config", "--quick", str(path)], ["run", "--config", str(path)]):
        out = edge(*args, cwd=gateway)
        assert out.returncode == 2, out.stderr
        assert f"error: {path}:{line}: owner_public_key: owner public key {gateway / 'a-file'} is not a PEM " \
               "public key" in out.stderr, out.stderr
