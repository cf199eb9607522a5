"""A gateway config for `edge-agent` subprocess tests, written beside a signed bundle, its owner
key and a signing key (tests/support/tiny_models.signed_bundle, gateway_keys.write_key)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.support.mosquitto import free_port


def write_edge_config(folder: Path, spool_dir: str = "state/spool", **changes) -> Path:
    """folder/edge.yaml: one camera, a local broker, a free metrics port; `changes` override keys."""
    cfg = {"gateway_id": "gw-1", "bundle": "model.bundle", "owner_public_key": "owner.pub",
           "signing_key_file": "signing.key", "state_dir": "state", "spool": {"directory": spool_dir},
           "cameras": [{"id": "cam1", "url": "rtsp://127.0.0.1:8554/cam"}],
           "mqtt": {"host": "127.0.0.1"}, "metrics_address": f"127.0.0.1:{free_port()}", "workers": 1,
           **changes}
    path = folder / "edge.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def edge_cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    """`edge-agent ARGS` in `cwd`, outside systemd (no $CREDENTIALS_DIRECTORY)."""
    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    return subprocess.run([sys.executable, "-m", "edge_agent.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120, env=env)
