"""The demo's child processes: each in its own process group, stopped as a group, never left behind.

Why process groups: the gateway and the backend start worker processes of their own; signalling
the group reaches those too, even if the daemon itself hangs. Each child is also started under
`setpriv --pdeathsig TERM`, so it is told to stop even if the orchestrator itself is killed with
SIGKILL (where no `finally` block runs).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

SETPRIV = shutil.which("setpriv")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float, child: "Child") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        child.check_alive()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{child.name} did not listen on port {port} within {timeout:.0f} s; "
                       f"see {child.log_path}")


class ChildFailed(RuntimeError):
    pass


class Child:
    """One started process (and its group). `stop()` is idempotent and bounded."""

    def __init__(self, name: str, cmd: list[str], log_path: Path, *, env: dict | None = None,
                 stdin=None, stdout=None, cwd: Path | None = None):
        self.name, self.cmd, self.log_path = name, cmd, log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")
        full = ([SETPRIV, "--pdeathsig", "TERM", "--"] if SETPRIV else []) + cmd
        try:
            self.proc = subprocess.Popen(full, stdin=stdin, stdout=stdout if stdout is not None else log,
                                         stderr=log, env=env, cwd=cwd, start_new_session=True)
        finally:
            log.close()
        self.pgid = self.proc.pid          # start_new_session: the child leads its own group

    def alive(self) -> bool:
        return self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise ChildFailed(f"{self.name} exited with status {self.proc.returncode}:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _group_alive(self) -> bool:
        try:
            os.killpg(self.pgid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:
            pass

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the group, wait up to `grace` s for the whole group to go, then SIGKILL it."""
        self._signal_group(signal.SIGTERM)
        self._wait_group(grace)
        if self._group_alive():
            self._signal_group(signal.SIGKILL)
            self._wait_group(5.0)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def kill(self) -> None:
        self._signal_group(signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._wait_group(5.0)

    def _wait_group(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.proc.poll()               # reap the leader, or the group looks alive (zombie)
            if not self._group_alive():
                return
            time.sleep(0.05)


class NotifySocket:
    """A private sd_notify socket: the gateway and the backend say READY=1 on it once they work."""

    def __init__(self, path: Path):
        path.unlink(missing_ok=True)
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)

    def wait_ready(self, child: Child, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            child.check_alive()
            try:
                if "READY=1" in self.sock.recv(4096).decode(errors="replace").split("\n"):
                    self._keep_draining()
                    return
            except socket.timeout:
                continue
        raise ChildFailed(f"{child.name} did not report ready within {timeout:.0f} s:\n{child.log_tail()}")

    def _keep_draining(self) -> None:
        """Read (and drop) the STATUS/WATCHDOG messages that follow READY, as systemd would: a full
        socket buffer makes the daemon's notifications fail (and log a warning every time)."""
        def drain() -> None:
            while True:
                try:
                    self.sock.recv(4096)
                except socket.timeout:
                    continue
                except OSError:          # closed: the demo is ending
                    return
        threading.Thread(target=drain, name=f"notify-{self.path.name}", daemon=True).start()

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


def start_mosquitto(workdir: Path, port: int) -> Child:
    """A private broker on loopback: anonymous, no persistence (production: configs/mosquitto)."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "mosquitto.conf"
    import pwd
    user = pwd.getpwuid(os.geteuid()).pw_name   # as root mosquitto would switch to "mosquitto"
    conf.write_text(f"user {user}\nper_listener_settings false\nlistener {port} 127.0.0.1\n"
                    f"allow_anonymous true\npersistence false\nlog_dest stderr\n"
                    f"max_packet_size 8388608\n")
    child = Child("mosquitto", [binary, "-c", str(conf)], workdir / "mosquitto.log")
    wait_port(port, 10, child)
    return child
