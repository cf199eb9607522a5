"""The command-line contract both tools share (service_common.cli.run_cli): a reader
that goes away is not an error."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _valid_backend_config(tmp_path: Path) -> Path:
    """configs/backend.yaml without the files only an installed host has (check-config checks them)."""
    import yaml
    cfg = yaml.safe_load((REPO / "configs/backend.yaml").read_text())
    cfg["mqtt"].pop("tls")
    cfg["mqtt"].update(host="127.0.0.1", password_file=None, username=None)
    cfg["metrics"] = {}
    cfg["alerts"]["rules_file"] = str(REPO / "configs/alert-rules.yaml")
    cfg["store"] = str(tmp_path / "store")             # an empty store: `run` needs one to exist
    (tmp_path / "store").mkdir()
    (tmp_path / "backend.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path / "backend.yaml"


@pytest.mark.parametrize("tool,args", [("backend-decryptor", ["check-config", "CONFIG"]),
                                       ("backend-decryptor", ["--help"]),
                                       ("edge-agent", ["--help"])])
def test_a_closed_pipe_ends_quietly(tool, args, tmp_path):
    args = [str(_valid_backend_config(tmp_path)) if a == "CONFIG" else a for a in args]
    # `head -c0` exits at once, so the command writes into a pipe nobody reads.
    cmd = f"sleep 0.2 | {BIN / tool} {' '.join(args)} | head -c0; echo rc=${{PIPESTATUS[1]}} >&2"
    out = subprocess.run(["bash", "-c", cmd], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "Broken pipe" not in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert "error:" not in out.stderr, out.stderr
    assert out.stderr.strip().splitlines()[-1] in ("rc=0", "rc=141"), out.stderr
