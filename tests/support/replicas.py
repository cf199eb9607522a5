"""Two-replica test plumbing shared by the PostgreSQL replica tests (tests/backend): a replica
process from a JSON spec (config + rules, tests/support/replica.py runs it), the cameras and
paced readings both tests publish, and the alert sequence one replica would raise for them."""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from backend_decryptor import alerts
from backend_decryptor.readings import read_outputs
from protected_nn.model_card import parse_card
from tests.support.backend import CARD, MODEL, RULES, rules
from tests.support.gateway_keys import public_keys

ROOT = Path(__file__).resolve().parents[2]
CAMERAS = [("gw-1", "cam-a"), ("gw-1", "cam-b"), ("gw-1", "cam-c"), ("gw-2", "cam-d"), ("gw-2", "cam-e")]


def spec(tmp_path, broker, database: dict, name: str, **over) -> Path:
    cfg = {"store": str(tmp_path / "store"), "database": database,
           "mqtt": {"host": broker.host, "port": broker.port, "client_id": name, "max_in_flight": 8,
                    "session_expiry": 120},
           "checks": {"allowed_gateways": ["gw-*"], "max_message_bytes": 4096, "max_clock_skew": 300,
                      "gateway_keys": public_keys(), "cameras_required": False},
           "decrypt": {"workers": 0, "timeout": 30}, **over}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"config": cfg, "rules": RULES}))
    return path


class Replica:
    def __init__(self, spec_path: Path, *flags: str):
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.support.replica", str(spec_path), *flags],
                                     cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], 90)
        line = self.proc.stdout.readline() if ready else ""
        if line.strip() != "ready":
            self.proc.kill()
            raise AssertionError(f"replica did not start: {line!r} {self.proc.stderr.read()[-3000:]}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.stderr.read()


def readings(rounds: int) -> dict[str, list[tuple[float, float]]]:
    """(crowd count, incident logit) per camera and round: random runs of low / middling / high
    crowds and of incident / no incident, so alerts are raised, updated and cleared."""
    rng = np.random.default_rng(7)
    out = {}
    for _, cam in CAMERAS:
        values: list[tuple[float, float]] = []
        while len(values) < rounds:
            count = float(rng.choice([rng.uniform(0, 6), rng.uniform(8.5, 12), rng.uniform(14, 25)]))
            logit = float(rng.choice([-4.0, 0.5, 3.0]))
            values += [(round(count + rng.uniform(-1, 1), 2), logit)] * int(rng.integers(1, 5))
        out[cam] = values[:rounds]
    return out


def one_replica(inputs, t0: float) -> dict[str, list[tuple]]:
    """The alert events one replica raises for these inputs: the rules engine applied in order."""
    card, r = parse_card(MODEL, CARD), rules()
    expected = {}
    for _, cam in CAMERAS:
        rs, state, events, ids = r.for_camera(cam), alerts.CameraState(), [], iter(range(10**6))
        for i, (count, logit) in enumerate(inputs[cam]):
            reading = read_outputs(card, np.array([[count, logit]]), rs.crowd.output, rs.incident.output)
            state, evs = alerts.step(rs, state, reading, t0 + i, new_id=lambda: f"alert-{next(ids)}")
            events += evs
        expected[cam] = shape(events)
    return expected


def shape(events) -> list[tuple]:
    """Events without their random ids, but with which of them belong to one alert."""
    first: dict[str, int] = {}
    return [(e.type, e.event, e.level, round(e.time, 3), e.meta["event_no"], first.setdefault(e.id, len(first)))
            for e in events]


