"""Issue 16, walked as a newcomer: a command that cannot write its output (a missing folder, a file
where a folder should be, a full disk or a file-size limit) says which option and path, in one
`error:` line with no `[Errno N]`, and leaves no temporary file and no partial result behind.
The real console scripts run as subprocesses; the "full disk" is RLIMIT_FSIZE (no root needed)."""
from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support.tiny_models import frame_model

BIN = Path(sys.executable).parent
BACKEND, EDGE = str(BIN / "backend-decryptor"), str(BIN / "edge-agent")


def _limit_file_size(limit: int):
    """preexec_fn: no file can grow beyond `limit` bytes (write() then fails with EFBIG, as on a
    full disk; SIGXFSZ ignored so the process sees the error instead of being killed)."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def cli(*argv, cwd: Path, fsize: int | None = None, ok: bool = False) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "FHE_EDGE_STORE": "/nonexistent-store-must-not-be-used"},
                          preexec_fn=_limit_file_size(fsize) if fsize else None)
    if ok:
        assert proc.returncode == 0, f"{argv}:\n{proc.stdout}\n{proc.stderr}"
    else:
        assert proc.returncode == 2, f"{argv} should fail with 2:\n{proc.stdout}\n{proc.stderr}"
        assert "Traceback" not in proc.stderr, proc.stderr
        assert not re.search(r"\[Errno \d+\]", proc.stderr), proc.stderr
    return proc


def error_line(proc) -> str:
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), proc.stderr
    return line


def listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def owner(tmp_path_factory):
    """A store with the tiny model protected by the real command, its bundle, a result."""
    d = tmp_path_factory.mktemp("owner")
    frame_model(d / "tiny.onnx")
    cli(BACKEND, "protect", "tiny.onnx", "--model-id", "tiny", "--store", "store", cwd=d, ok=True)
    cli(BACKEND, "export", "tiny", "--store", "store", "--out", "tiny.bundle", cwd=d, ok=True)
    x = np.random.default_rng(0).random((1, 2, 8, 8)).astype(np.float32)
    np.save(d / "x.npy", x)
    np.save(d / "x3.npy", np.concatenate([x, x, x]))
    cli(EDGE, "infer", "--bundle", "tiny.bundle", "x.npy", "--out", "r1",
        "--owner-key", "tiny.bundle.owner.pub", cwd=d, ok=True)
    return d


@pytest.fixture
def work(owner, tmp_path):
    """A fresh folder with a copy of everything, so each test can list what a failure left."""
    for p in owner.iterdir():
        (shutil.copytree if p.is_dir() else shutil.copy)(p, tmp_path / p.name)
    return tmp_path


def test_export_into_a_missing_folder_names_out(work):
    proc = cli(BACKEND, "export", "tiny", "--store", "store", "--out", "x.npy/b.bundle", cwd=work)
    assert error_line(proc) == "error: --out x.npy/b.bundle: cannot write: Not a directory (x.npy is not a folder)"


def test_export_on_a_full_disk_names_out_and_leaves_no_temp_file(work):
    before = listing(work)
    proc = cli(BACKEND, "export", "tiny", "--store", "store", "--out", "new.bundle", cwd=work, fsize=300_000)
    assert error_line(proc) == "error: --out new.bundle: cannot write: File too large"
    assert listing(work) == before


def test_protect_into_a_store_under_a_file_names_store(work):
    proc = cli(BACKEND, "protect", "tiny.onnx", "--model-id", "t2", "--store", "x.npy/store", cwd=work)
    assert error_line(proc).startswith("error: --store x.npy/store: ")


def test_protect_on_a_full_disk_names_store_and_leaves_nothing(work):
    before = listing(work)
    proc = cli(BACKEND, "protect", "tiny.onnx", "--model-id", "t2", "--store", "new-store", cwd=work,
               fsize=300_000)
    assert error_line(proc) == "error: --store new-store: cannot store model t2: File too large"
    assert listing(work) == before          # the new store is gone, nothing half-written inside


def test_protect_into_an_existing_store_on_a_full_disk_keeps_it_as_it_was(work):
    before = listing(work)
    proc = cli(BACKEND, "protect", "tiny.onnx", "--model-id", "t2", "--store", "store", cwd=work,
               fsize=300_000)
    assert error_line(proc) == "error: --store store: cannot store model t2: File too large"
    assert {p for p in listing(work) - before if not p.startswith("store/models/t2")} == set()
    assert not [p for p in (work / "store").rglob("*") if ".tmp" in p.name]
    models = cli(BACKEND, "models", "--store", "store", cwd=work, ok=True).stdout
    assert "t2" not in models and "tiny" in models


def test_infer_into_a_missing_folder_names_out(work):
    proc = cli(EDGE, "infer", "--bundle", "tiny.bundle", "x.npy", "--out", "x.npy/r",
               "--owner-key", "tiny.bundle.owner.pub", cwd=work)
    assert error_line(proc) == "error: --out x.npy/r: cannot write: Not a directory (x.npy is not a folder)"


def test_infer_that_cannot_replace_out_leaves_no_temp_file(work):
    (work / "taken").mkdir()
    (work / "taken" / "keep").write_text("an unrelated file")
    before = listing(work)
    proc = cli(EDGE, "infer", "--bundle", "tiny.bundle", "x.npy", "--out", "taken",
               "--owner-key", "tiny.bundle.owner.pub", cwd=work)
    assert error_line(proc).startswith("error: --out taken: cannot write: ")
    assert listing(work) == before


def test_a_failed_batch_leaves_no_result_folder(work):
    before = listing(work)
    proc = cli(EDGE, "infer", "--bundle", "tiny.bundle", "x3.npy", "--out", "batch",
               "--owner-key", "tiny.bundle.owner.pub", cwd=work, fsize=1000)
    assert error_line(proc) == "error: --out batch/000000.result: cannot write: File too large"
    assert listing(work) == before


def test_a_batch_folder_that_cannot_be_made_names_out(work):
    proc = cli(EDGE, "infer", "--bundle", "tiny.bundle", "x3.npy", "--out", "x.npy/batch",
               "--owner-key", "tiny.bundle.owner.pub", cwd=work)
    assert error_line(proc).startswith("error: --out x.npy/batch: cannot create the folder: ")


def test_decrypt_that_cannot_write_names_out_and_leaves_no_temp_file(work):
    proc = cli(BACKEND, "decrypt", "tiny", "r1", "--store", "store", "--out", "x.npy/y.npy", cwd=work)
    assert error_line(proc) == "error: --out x.npy/y.npy: cannot write: Not a directory (x.npy is not a folder)"
    before = listing(work)
    proc = cli(BACKEND, "decrypt", "tiny", "r1", "--store", "store", "--out", "y.npy", cwd=work, fsize=10)
    assert error_line(proc) == "error: --out y.npy: cannot write: File too large"
    assert listing(work) == before


def test_protect_help_shows_the_defaults_it_uses():
    from protected_nn.api import ProtectOptions
    defaults = ProtectOptions()
    text = " ".join(subprocess.run([BACKEND, "protect", "--help"], capture_output=True, text=True,
                                   check=True).stdout.split())
    assert f"(default {defaults.poly_degree})" in text
    assert f"(default {defaults.tolerance:g})" in text
    assert f"calibrate on {defaults.calibration_samples} inputs" in text
    assert f"(default {defaults.input_range[0]:g},{defaults.input_range[1]:g})" in text


def test_an_os_error_no_command_named_still_shows_path_and_reason():
    from service_common.cli import os_error_text
    assert os_error_text(OSError(28, "No space left on device")) == "No space left on device"
    assert os_error_text(FileExistsError(17, "File exists", "/x/state")) == "/x/state: File exists"
    assert os_error_text(OSError("plain")) == "plain"


def test_every_problem_of_a_failed_command_is_its_own_error_line(tmp_path):
    """`run` and `check-config` raise one error holding several problems (a rules file with two
    mistakes): before, only the first line said `error:`; the edge side prints each with it."""
    rules = tmp_path / "rules.yaml"
    rules.write_text("crowd:\n  levels: {low: 0, high: 20, medium: 10}\nincident:\n  probability: 1.5\n")
    (tmp_path / "backend.yaml").write_text(f"store: {tmp_path / 'store'}\nmqtt: {{host: 127.0.0.1}}\n"
                                           f"alerts: {{rules_file: {rules}}}\n")
    proc = cli(BACKEND, "check-config", "backend.yaml", cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith(f"error: {rules}:") for line in lines), proc.stderr


def test_keygen_into_a_missing_folder_names_out(work):
    proc = cli(EDGE, "keygen", "--out", "x.npy/signing.key", cwd=work)
    assert error_line(proc) == "error: --out x.npy/signing.key: cannot write: Not a directory (x.npy is not a folder)"


def test_export_keys_that_cannot_be_written_leaves_no_key_file(work):
    proc = cli(BACKEND, "models", "export-keys", "tiny", "--out", "x.npy/keys", "--store", "store", cwd=work)
    assert error_line(proc) == "error: --out x.npy/keys: cannot create: Not a directory (x.npy is not a folder)"
    before = listing(work)
    proc = cli(BACKEND, "models", "export-keys", "tiny", "--out", "keys", "--store", "store", cwd=work,
               fsize=100_000)
    assert error_line(proc) == "error: --out keys: cannot write: File too large"
    assert listing(work) == before          # no half key file (it would hold secret keys)
