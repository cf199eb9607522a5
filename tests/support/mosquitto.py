"""A real Mosquitto broker on a free loopback port, started and stopped by the tests."""
from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from tests.support import process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mosquitto:
    """`with Mosquitto() as broker:` -> broker.host, broker.port; `stop()`/`start()` simulate
    an outage on the same port. Extra config lines (ACL, password file...) via `extra_config`."""

    def __init__(self, port: int | None = None, extra_config: str = "", listener_config: str = ""):
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="mosq-"))
        self.extra_config = extra_config
        self.listener_config = listener_config
        self.proc: subprocess.Popen | None = None
        self.binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"

    def _write_config(self) -> Path:
        conf = self.dir / "mosquitto.conf"
        listener = self.listener_config or "allow_anonymous true\n"
        # Started as root, mosquitto would drop to user "mosquitto", which cannot write here.
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
        conf.write_text(user + 
            f"per_listener_settings false\nlistener {self.port} {self.host}\n{listener}"
            f"persistence false\nlog_dest file {self.dir / 'mosquitto.log'}\n"
            f"max_packet_size 8388608\n{self.extra_config}\n")
        return conf

    def start(self, timeout: float = 10.0) -> "Mosquitto":
        conf = self._write_config()
        self.proc = subprocess.Popen([self.binary, "-c", str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        process.wait_listening(self.proc, self.host, self.port, timeout, "mosquitto", self.log)
        return self

    def stop(self) -> None:
        process.stop(self.proc)
        self.proc = None

    def log(self) -> str:
        p = self.dir / "mosquitto.log"
        return p.read_text(errors="replace")[-4000:] if p.exists() else ""

    def __enter__(self) -> "Mosquitto":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
