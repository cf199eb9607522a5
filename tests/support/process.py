"""Start-and-wait / stop for the real servers the tests run (Mosquitto, the RTSP camera)."""
from __future__ import annotations

import socket
import subprocess
import time
from typing import Callable


def wait_listening(proc: subprocess.Popen, host: str, port: int, timeout: float, name: str,
                   log: Callable[[], str]) -> None:
    """Return once `proc` accepts TCP connections on host:port; raise with its log if it exits
    or does not listen within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited: {log()}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    stop(proc)
    raise RuntimeError(f"{name} did not listen on {port}: {log()}")


def stop(proc: subprocess.Popen | None) -> None:
    """SIGTERM, then SIGKILL after 5 s."""
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def eventually(predicate, timeout: float = 5.0, interval: float = 0.02) -> bool:
    """Poll `predicate` until it is true (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
