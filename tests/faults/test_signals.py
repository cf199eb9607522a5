"""SIGTERM/SIGHUP delivered to ANY thread of a service must still be acted on.

`kill PID` lets the kernel pick the thread that receives a process signal; Python runs its handler
only in the main thread, and only when that thread executes bytecode. A main thread parked in an
untimed (or hour-long) wait then never runs it: the stop or reload is lost. tgkill() aims the
signal at one chosen worker thread, deterministically reproducing the unlucky case. Both services
run as subprocesses with real parts (Mosquitto; the gateway with its worker pool)."""
from __future__ import annotations

import ctypes
import os
import signal
import time

import pytest

from tests.support.backend_process import BackendProcess

SYS_TGKILL = {"x86_64": 234, "aarch64": 131}.get(os.uname().machine)
pytestmark = pytest.mark.skipif(SYS_TGKILL is None, reason="tgkill syscall number unknown on this machine")


def signal_a_non_main_thread(pid: int, sig: int) -> int:
    """Send `sig` to one thread of `pid` other than its main thread; returns that thread's id."""
    tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid)
    assert tids, "the service has no other thread"
    tid = tids[0]
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.syscall(SYS_TGKILL, pid, tid, sig) == 0, os.strerror(ctypes.get_errno())
    return tid


def _stops_within(proc, seconds: float) -> bool:
    try:
        proc.wait(seconds)
        return True
    except Exception:
        return False


def test_gateway_stops_on_sigterm_received_by_a_worker_thread(tmp_path, broker):
    from tests.support.edge_daemon import Daemon
    from tests.support.pipeline import ChainOwner
    owner = ChainOwner(tmp_path)
    (tmp_path / "gw").mkdir()
    d = Daemon(tmp_path / "gw", owner, broker, {"cam-a": "rtsp://127.0.0.1:9/none"})   # no camera needed
    try:
        d.wait_ready()
        time.sleep(0.5)
        signal_a_non_main_thread(d.proc.pid, signal.SIGTERM)
        t0 = time.monotonic()
        assert _stops_within(d.proc, 10), "SIGTERM on a worker thread ignored: " + d.output()
        assert d.proc.returncode == 0 and time.monotonic() - t0 < 10
    finally:
        d.close()


def test_backend_stops_on_sigterm_received_by_a_worker_thread(tmp_path, broker):
    (tmp_path / "store").mkdir(mode=0o700)
    backend = BackendProcess(tmp_path, broker).start()
    try:
        signal_a_non_main_thread(backend.proc.pid, signal.SIGTERM)
        assert _stops_within(backend.proc, 10), "SIGTERM on a worker thread ignored"
        assert backend.proc.returncode == 0
    finally:
        backend.kill()


def test_backend_stops_on_plain_sigterm(tmp_path, broker):
    """The usual case (the kernel picks the main thread): clean exit well within 10 s."""
    (tmp_path / "store").mkdir(mode=0o700)
    backend = BackendProcess(tmp_path, broker).start()
    try:
        assert backend.terminate() < 10 and backend.proc.returncode == 0, backend.log()
    finally:
        backend.kill()
