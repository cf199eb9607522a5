"""The command-line contract both tools share (protected_nn.service_support.run_cli): a reader
that goes away is not an error."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.mark.parametrize("tool,args", [("backend-decryptor", ["check-config", "configs/backend.yaml"]),
                                       ("backend-decryptor", ["--help"]),
                                       ("edge-agent", ["--help"])])
def test_a_closed_pipe_ends_quietly(tool, args):
    # `head -c0` exits at once, so the command writes into a pipe nobody reads.
    cmd = f"sleep 0.2 | {BIN / tool} {' '.join(args)} | head -c0; echo rc=${{PIPESTATUS[1]}} >&2"
    out = subprocess.run(["bash", "-c", cmd], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "Broken pipe" not in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert "error:" not in out.stderr, out.stderr
    assert out.stderr.strip().splitlines()[-1] in ("rc=0", "rc=141"), out.stderr
