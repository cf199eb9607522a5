"""An edge password file the daemon's user cannot read (issue 12): `edge-agent run` prints one
`error:` line naming file, line, setting and path - no traceback - and exits 2 before it opens
the metrics port. The file really is unreadable: as root the command runs as `nobody` (root reads
every file), otherwise the file is mode 000."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.support.gateway_keys import write_key
from tests.support.mosquitto import free_port

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534


@pytest.fixture
def folder():
    # Not tmp_path: pytest's base folder is private to root, and the command may run as nobody.
    path = Path(tempfile.mkdtemp(prefix="fhe-edge-pw-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def as_daemon_user(path: Path) -> list[str]:
    if os.geteuid() != 0:
        return []
    for p in [path, *path.rglob("*")]:
        os.chown(p, NOBODY, NOBODY)
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def test_an_unreadable_password_file_is_one_error_line_before_the_metrics_port(folder):
    from protected_nn import bundle   # a real owner key: only the password may be wrong here
    bundle.save_public_key(bundle.generate_owner_key(), folder / "owner.pub")
    (folder / "model.bundle").write_text("not read before the password\n")
    write_key(folder / "signing.key", "gw-1")
    (folder / "pw").write_text("s3cret\n")
    port = free_port()
    cfg = {"gateway_id": "gw-1", "bundle": "model.bundle", "owner_public_key": "owner.pub",
           "signing_key_file": "signing.key", "state_dir": "state", "spool": {"directory": "state/spool"},
           "cameras": [{"id": "cam-1", "url": "rtsp://127.0.0.1:8554/cam"}],
           "mqtt": {"host": "127.0.0.1", "username": "gw", "password_file": "pw"},
           "metrics_address": f"127.0.0.1:{port}", "workers": 1}
    (folder / "edge.yaml").write_text(yaml.safe_dump(cfg))
    prefix = as_daemon_user(folder)
    (folder / "pw").chmod(0)
    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run([*prefix, sys.executable, "-m", "edge_agent.cli", "run", "--config", str(folder / "edge.yaml")],
                         cwd="/", env=env, capture_output=True, text=True, timeout=120)
    line = next(i for i, t in enumerate((folder / "edge.yaml").read_text().splitlines(), 1) if "password_file" in t)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip().splitlines() == [
        f"error: {folder / 'edge.yaml'}:{line}: mqtt.password_file {folder / 'pw'}: cannot read: Permission denied"]
    with socket.socket() as s:                       # the metrics port was never taken
        s.bind(("127.0.0.1", port))
