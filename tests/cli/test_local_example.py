"""A fresh clone has a config that passes both check-configs (issue 16): scripts/local-example.sh
protects the shipped model (~10-30 s), exports the bundle, makes a signing key and writes
local edge/backend YAML from configs/*.yaml."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.support.mosquitto import free_port

REPO = Path(__file__).resolve().parents[2]


def test_local_example_passes_both_check_configs(tmp_path):
    out_dir = tmp_path / "local"
    env = {**os.environ, "PYTHON": sys.executable, "METRICS_PORT": str(free_port())}
    env.pop("CREDENTIALS_DIRECTORY", None)
    run = subprocess.run([str(REPO / "scripts/local-example.sh"), str(out_dir)], capture_output=True,
                         text=True, cwd=tmp_path, env=env, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "error:" not in run.stderr
    assert f"{out_dir / 'edge.yaml'}: ok - gateway gw-harbour-01" in run.stdout
    assert f"{out_dir / 'backend.yaml'}: ok" in run.stdout
    assert "model crowd_incident: outputs crowd_count, incident" in run.stdout
    # every path in the written configs is local (relative to the file), nothing under /etc or /var
    for name in ("edge.yaml", "backend.yaml"):
        text = (out_dir / name).read_text()
        assert "/etc/" not in text and "/var/" not in text, text
    assert yaml.safe_load((out_dir / "edge.yaml").read_text())["signing_key_file"] == "signing.key"
