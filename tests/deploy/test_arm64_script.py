"""scripts/check-arm64.sh without emulation: its syntax, its arguments, and that it stops at once
with a clear message where the machine cannot run aarch64 programs (no binfmt_misc, no
qemu-aarch64 entry, an entry the chroot could not use). The kernel is faked by pointing
FHE_EDGE_BINFMT_DIR at a temporary folder and putting fake id/dpkg-query/mount/update-binfmts first
on PATH; everything the script does before those checks is real. The emulated run itself is slow
and lives outside the test suite (docs/gateway.md, "ARM gateways")."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check-arm64.sh"
AARCH64_MAGIC = "magic 7f454c460201010000000000000000000200b700"


def run(args=(), env=None, timeout=30):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def fake_tool(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)


@pytest.fixture
def fake_host(tmp_path):
    """A Debian-looking root host whose kernel is a folder: -> (env, binfmt dir, bin dir)."""
    bin_dir, binfmt = tmp_path / "bin", tmp_path / "binfmt_misc"
    bin_dir.mkdir()
    binfmt.mkdir()
    fake_tool(bin_dir, "id", 'echo 0')
    fake_tool(bin_dir, "dpkg-query", "printf 'install ok installed'")
    fake_tool(bin_dir, "apt-get", 'echo "apt-get must not run here" >&2; exit 99')
    fake_tool(bin_dir, "mount", 'echo "mount: $4: permission denied." >&2; exit 32')
    fake_tool(bin_dir, "update-binfmts", "exit 2")
    fake_tool(bin_dir, "debootstrap", 'echo "debootstrap must not run here" >&2; exit 99')
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FHE_EDGE_BINFMT_DIR=str(binfmt),
               FHE_EDGE_ARM64_ROOT=str(tmp_path / "root"))
    return env, binfmt, tmp_path


def test_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck_finds_no_errors():
    res = subprocess.run(["shellcheck", "-S", "error", str(SCRIPT)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout


def test_help_and_bad_arguments():
    res = run(["--help"])
    assert res.returncode == 0 and "--root DIR" in res.stdout
    res = run(["--frobnicate"])
    assert res.returncode == 2 and "unknown argument: --frobnicate" in res.stderr
    res = run(["--root"])
    assert res.returncode == 2 and "usage:" in res.stderr


def test_root_slash_is_refused(fake_host):
    env, _, _ = fake_host
    res = run(["--root", "/"], env=env)
    assert res.returncode == 1 and "--root / would" in res.stderr


def test_not_root_is_refused(fake_host):
    env, _, tmp = fake_host
    fake_tool(tmp / "bin", "id", "echo 1000")
    res = run(env=env)
    assert res.returncode == 1 and "run as root" in res.stderr


def test_kernel_refusing_binfmt_misc_fails_clearly(fake_host):
    env, binfmt, tmp = fake_host
    res = run(env=env)
    assert res.returncode == 1
    assert f"the kernel refused binfmt_misc at {binfmt}" in res.stderr
    assert "permission denied" in res.stderr          # the kernel's own reason is passed on
    assert "must not run" not in res.stderr
    assert not (tmp / "root").exists()                # nothing was built


def test_hanging_mount_does_not_hang_the_script(fake_host):
    env, binfmt, tmp = fake_host
    fake_tool(tmp / "bin", "mount", "sleep 600")
    env["FHE_EDGE_MOUNT_TIMEOUT"] = "1"
    res = run(env=env, timeout=20)
    assert res.returncode == 1 and "refused binfmt_misc" in res.stderr


def test_missing_qemu_aarch64_entry_fails_clearly(fake_host):
    env, binfmt, _ = fake_host
    (binfmt / "status").write_text("enabled\n")
    res = run(env=env)
    assert res.returncode == 1
    assert "qemu-aarch64 is not registered" in res.stderr and "must not run" not in res.stderr


def test_qemu_entry_without_fix_binary_flag_fails_clearly(fake_host):
    env, binfmt, _ = fake_host
    (binfmt / "status").write_text("enabled\n")
    (binfmt / "qemu-aarch64").write_text(
        f"enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: P\noffset 0\n{AARCH64_MAGIC}\n")
    res = run(env=env)
    assert res.returncode == 1 and "without flag F" in res.stderr


@pytest.mark.parametrize("layout, message", [
    ({}, "no (or several) aarch64 Python sysconfig"),
    ({"usr/lib/python3.9/_sysconfigdata__linux_aarch64-linux-gnu.py": ""}, "the root's Python is python3.9"),
    ({"usr/lib/python{v}/_sysconfigdata__linux_aarch64-linux-gnu.py": ""}, "lacks /usr/include/python{v}/Python.h"),
])
def test_cross_build_checks_the_root_before_downloading(tmp_path, layout, message):
    """build-pyfhel.sh with FHE_EDGE_PYFHEL_AARCH64_ROOT stops with a clear message when the arm64
    root cannot serve as the cross build's sysroot (before the sdist is fetched: no pip download
    output, and no wheel)."""
    import sys
    v = f"{sys.version_info[0]}.{sys.version_info[1]}"
    root, bin_dir = tmp_path / "root", tmp_path / "bin"
    root.mkdir()
    bin_dir.mkdir()
    for rel, text in layout.items():
        (root / rel.format(v=v)).parent.mkdir(parents=True, exist_ok=True)
        (root / rel.format(v=v)).write_text(text)
    for tool in ("aarch64-linux-gnu-g++", "qemu-aarch64-static"):   # present or not on this host
        fake_tool(bin_dir, tool, "exit 0")
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FHE_EDGE_PYFHEL_AARCH64_ROOT=str(root),
               FHE_EDGE_WHEELS=str(tmp_path / "wheels"))
    res = subprocess.run(["bash", str(SCRIPT.parent / "build-pyfhel.sh"), sys.executable],
                         capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 1, res.stderr
    assert "aarch64 cross build: " in res.stderr and message.format(v=v) in res.stderr
    assert "building Pyfhel" not in res.stderr and not list((tmp_path / "wheels").glob("*.whl"))
