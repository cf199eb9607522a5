"""`backend-decryptor run` as a subprocess for the tests (a crash is a process exit, not a caught
exception): its config written from arguments, metrics scraped over HTTP, its state read from SQLite."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.support.gateway_keys import public_keys
from tests.support.mosquitto import free_port

REPO = Path(__file__).resolve().parents[2]
MAX_BYTES = 256 * 1024
# Mosquitto's default queue per subscriber is 1000 messages: beyond it, QoS 1 messages for a busy
# subscriber are DROPPED by the broker. configs/mosquitto/mosquitto.conf raises it; so do we.
BROKER_QUEUE = "max_queued_messages 100000\nmax_queued_bytes 1073741824\n"


class BackendProcess:
    """`backend-decryptor run` on a config written here; metrics over HTTP, state in SQLite."""

    def __init__(self, root: Path, broker, client_id: str = "backend-1", rules: str | None = None,
                 workers: int = 1, max_bytes: int = MAX_BYTES, allowed_gateways=("gw-1", "gw-2", "gw-nokey"),
                 limits: dict | None = None, mqtt: dict | None = None, checks: dict | None = None):
        self.root = root
        self.metrics_port = free_port()
        (root / "rules.yaml").write_text(rules or "crowd: {threshold: 10, consecutive: 2, hysteresis: 2}\n"
                                                  "incident: {probability: 0.8, consecutive: 2}\n")
        self.config = root / "backend.yaml"
        self.config.write_text(json.dumps({**({"limits": limits} if limits is not None else {}),
            "store": str(root / "store"), "state_db": str(root / "state.db"),
            "mqtt": {"host": broker.host, "port": broker.port, "client_id": client_id, "max_in_flight": 32, **(mqtt or {})},
            "checks": {"allowed_gateways": list(allowed_gateways), "max_message_bytes": max_bytes, "max_clock_skew": 300,
                       # every test gateway signs with tests.support.gateway_keys; cameras bind on first use
                       "gateway_keys": public_keys(), "cameras_required": False, **(checks or {})},
            "decrypt": {"workers": workers, "timeout": 30},
            "alerts": {"rules_file": str(root / "rules.yaml")},
            "metrics": {"listen": f"127.0.0.1:{self.metrics_port}"}, "log_level": "WARNING"}))
        self.log_path = root / f"{client_id}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> "BackendProcess":
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen([sys.executable, "-m", "backend_decryptor.cli", "run", "--config",
                                      str(self.config)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"))
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "backend exited at start: " + self.log()
            if self.scrape():
                time.sleep(1.0)   # metrics come up before the subscription; SUBACK is quick on loopback
                return self
            time.sleep(0.2)
        raise AssertionError("backend did not come up: " + self.log())

    def scrape(self) -> dict[str, float]:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2).read().decode()
        except OSError:
            return {}
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def rejected(self, metrics: dict | None = None) -> dict[str, float]:
        metrics = metrics if metrics is not None else self.scrape()
        return {k.split('"')[1]: v for k, v in metrics.items() if k.startswith("backend_messages_rejected_total{")}

    def handled(self) -> tuple[float, float, float]:
        m = self.scrape()
        return (m.get("backend_messages_received_total", 0.0), m.get("backend_messages_processed_total", 0.0),
                sum(self.rejected(m).values()))

    def wait_handled(self, total: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "backend died: " + self.log()
            received, processed, rejected = self.handled()
            if processed + rejected >= total:
                return
            time.sleep(0.2)
        raise AssertionError(f"only {self.handled()} of {total} handled: " + self.log())

    def terminate(self) -> float:
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(15)
        return time.monotonic() - t0

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def db(self, query: str) -> list:
        with sqlite3.connect(self.root / "state.db") as conn:
            return conn.execute(query).fetchall()
