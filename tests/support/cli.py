"""The real console scripts (.venv/bin/backend-decryptor, .venv/bin/edge-agent) as subprocesses,
and the command-line contract they are held to: exit 0, or exit 2 with one `error:` line last."""
from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
BACKEND, EDGE = str(BIN / "backend-decryptor"), str(BIN / "edge-agent")


@functools.cache
def api_ready() -> bool:
    """False while api.protect is the stub: it raises NotImplementedError before looking at its input.
    Anything else (even an import error) counts as ready, so a broken api fails loudly, not skips."""
    try:
        from protected_nn import api
        api.protect("/nonexistent/probe.onnx")
    except NotImplementedError:
        return False
    except Exception:
        return True
    return True


needs_api = pytest.mark.skipif(not api_ready(), reason="protected_nn.api.protect not implemented yet")


def run(*argv, ok=True):
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=600,
                          env={**os.environ, "FHE_EDGE_STORE": "/nonexistent-store-must-not-be-used"})
    if ok:
        assert proc.returncode == 0, f"{argv} failed:\n{proc.stdout}\n{proc.stderr}"
    else:
        assert proc.returncode == 2, f"{argv} should have failed with 2:\n{proc.stdout}\n{proc.stderr}"
        assert "Traceback" not in proc.stderr, proc.stderr
        assert "error:" in proc.stderr.strip().splitlines()[-1], proc.stderr  # one clear line, last
    return proc


def owner_key(store: Path) -> list[str]:
    """The `--owner-key` arguments for the signing key of the owner store `store`."""
    return ["--owner-key", str(store / "owner_ed25519.pub.pem")]
