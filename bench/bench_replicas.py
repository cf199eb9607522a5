"""Two backend replicas on one PostgreSQL: the issue-13 targets (not part of the test run).

    .venv/bin/python bench/bench_replicas.py [--gateways 20] [--cameras 5] [--results 2000]
        [--rate 40] [--no-pin]

Real parts only: `backend-decryptor run` processes (the real CLI, store, decryption pool), a real
Mosquitto, a throwaway durable PostgreSQL (tests/support/postgres.py), real encrypted results of
a tiny model signed by 20 gateway keys. Each replica has its own working directory and its own
store, provisioned from the owner's with `models export-keys` / `models import-keys`, and shares
only the broker and the database with the other.

1. exact: the same paced input (each camera's results `cameras x gateways / rate` s apart) through
   ONE replica and through TWO; per camera the alert events (type, event, level, the sequence of
   the result that caused it, event_no, which events share an alert) must be identical; 0 lost,
   0 handled twice.
2. kill: two replicas, one SIGKILLed halfway through the stream and restarted after it ends:
   0 lost, 0 decided twice (redeliveries of what it had committed are refused as replays), every
   alert published, duplicates on the broker counted.
3. scaling: the whole input published at once; results/s of one replica vs two, each replica
   pinned to its own core with taskset (unless --no-pin); storage time per result is in
   bench_storage.py.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_backend import CARD, MODEL_ID, build_model  # noqa: E402
from protected_nn import api, envelope, gateway_key  # noqa: E402
from tests.support.mosquitto import Mosquitto  # noqa: E402
from tests.support.postgres import PostgresServer  # noqa: E402

RULES = {"crowd": {"threshold": 10, "hysteresis": 2, "consecutive": 2, "levels": {"low": 0, "medium": 10, "high": 18}},
         "incident": {"probability": 0.8, "consecutive": 2, "clear_consecutive": 2, "cooldown": "10s"}}
CLI = [sys.executable, "-m", "backend_decryptor.cli"]


def cli(*args: str) -> None:
    subprocess.run([*CLI, *args], check=True, cwd=ROOT, capture_output=True, text=True)


class Bench:
    def __init__(self, args, work: Path):
        self.args, self.work = args, work
        self.gateways = {f"gw-{g:02d}": gateway_key.generate() for g in range(args.gateways)}
        self.cameras = [(g, f"{g}-cam-{c}") for g in self.gateways for c in range(args.cameras)]
        onnx_path = work / "model.onnx"
        build_model("tiny", onnx_path)
        prot = api.protect(onnx_path, options=api.ProtectOptions(model_card=CARD))
        from backend_decryptor.store import Store
        Store(work / "owner").add_model(MODEL_ID, prot, hashlib.sha256(onnx_path.read_bytes()).hexdigest())
        cli("models", "--store", str(work / "owner"), "export-keys", MODEL_ID, "--out", str(work / "bench.keys"))
        self.fp = prot.artifacts.key_fingerprint
        edge = api.EdgeModel(prot.artifacts)
        # crowd counts 3, 9, 15, 21 x incident logit -5 / +3 (the tiny model: count = 30 x0, logit = 10 x1 - 5)
        self.payloads = {(x0, x1): edge.infer(np.array([[x0, x1, 0, 0]], np.float32))
                         for x0 in (0.1, 0.3, 0.5, 0.7) for x1 in (0.0, 0.8)}
        rng = np.random.default_rng(3)
        keys = list(self.payloads)
        rounds = args.results // len(self.cameras)
        self.plan = {}   # camera -> payload key per round: runs of 1..4 equal readings
        for _, cam in self.cameras:
            seq: list = []
            while len(seq) < rounds:
                seq += [keys[rng.integers(len(keys))]] * int(rng.integers(1, 5))
            self.plan[cam] = seq[:rounds]
        self.rounds = rounds
        self.total = rounds * len(self.cameras)

    def replica_dir(self, name: str, broker, database: dict, group: str) -> Path:
        d = self.work / name
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        cli("models", "--store", str(d / "store"), "import-keys", str(self.work / "bench.keys"))
        (d / "alert-rules.yaml").write_text(yaml.safe_dump(RULES))
        cfg = {"store": str(d / "store"), "database": database,
               "mqtt": {"host": broker.host, "port": broker.port, "client_id": name, "max_in_flight": 32,
                        "session_expiry": 600, "shared_group": group},
               "checks": {"allowed_gateways": ["gw-*"], "max_message_bytes": 1 << 20,
                          "gateway_keys": {g: gateway_key.public_key_text(k) for g, k in self.gateways.items()},
                          "gateway_cameras": {g: [c for gg, c in self.cameras if gg == g] for g in self.gateways}},
               "limits": {"per_gateway_rate": None}, "decrypt": {"workers": 1},
               "alerts": {"rules_file": "alert-rules.yaml", "state_interval": 0}, "log_level": "WARNING"}
        (d / "backend.yaml").write_text(yaml.safe_dump(cfg))
        return d

    def start(self, d: Path, core: int | None) -> subprocess.Popen:
        pin = ["taskset", "-c", str(core)] if core is not None and shutil.which("taskset") else []
        return subprocess.Popen([*pin, *CLI, "run", "--config", str(d / "backend.yaml")], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=open(d / "log", "a"),
                                env={**os.environ, "PYTHONPATH": str(ROOT)})

    def messages(self, t0: float, spacing: float):
        for r in range(self.rounds):
            # rotated by one camera per round: the broker hands messages to the replicas in turn,
            # so with an even number of cameras each camera would otherwise always reach the same one
            for g, cam in self.cameras[r % len(self.cameras):] + self.cameras[:r % len(self.cameras)]:
                env = envelope.Envelope(MODEL_ID, self.fp, g, cam, r, t0 + r * spacing, self.payloads[self.plan[cam][r]])
                yield f"fhe-edge/infer/{g}/{cam}", envelope.encode(env, self.gateways[g])


def mqtt_client(broker, subscribe=()):
    import paho.mqtt.client as mqtt
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(1000)
    c.received, c.lock, done = [], threading.Lock(), threading.Event()

    def on_message(client, userdata, msg):
        with c.lock:
            c.received.append((msg.topic, msg.payload, msg.retain))
    c.on_message = on_message
    c.on_subscribe = lambda *a: done.set()
    c.connect(broker.host, broker.port)
    c.loop_start()
    if subscribe:
        c.subscribe([(s, 1) for s in subscribe])
        done.wait(10)
    return c


def wait_online(watch, names, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with watch.lock:
            online = {t.split("/")[2] for t, p, _ in watch.received if t.endswith("/availability") and p == b"online"}
        if set(names) <= online:
            time.sleep(1.0)  # "online" goes out just before the subscription is confirmed
            return
        time.sleep(0.1)
    raise RuntimeError(f"replicas {names} did not come online")


def db_counts(pg, dbname):
    with pg.connect(dbname) as c:
        processed = c.execute("SELECT COALESCE(SUM(messages), 0)::bigint FROM counters").fetchone()[0]
        rejected = dict(c.execute("SELECT reason, count FROM rejections").fetchall())
        seen = c.execute("SELECT COUNT(*) FROM seen").fetchone()[0]
        unpublished = c.execute("SELECT COUNT(*) FROM alerts WHERE published = 0").fetchone()[0]
    return processed, rejected, seen, unpublished


def alert_shapes(pg, dbname) -> dict[str, list]:
    with pg.connect(dbname) as c:
        rows = c.execute("SELECT camera, id, type, event, level, time, meta FROM alerts ORDER BY time, row").fetchall()
    out: dict[str, list] = {}
    ids: dict[str, dict] = {}
    for cam, id_, type_, event, level, t, meta in rows:
        first = ids.setdefault(cam, {})
        meta = json.loads(meta)  # the result's sequence, not its capture time: each run has its own t0
        out.setdefault(cam, []).append((type_, event, level, meta["sequence"], meta["event_no"],
                                        first.setdefault(id_, len(first))))
    return out


def run_stream(bench, pg, broker, names, *, spacing, pace, kill_at=None, cores=(None, None)):
    """Start replicas, publish the input, wait until all is handled; returns a result dict."""
    dbname = pg.fresh_database()
    database = pg.database_config(dbname)
    database["sslmode"] = "disable"
    # each run its own shared group: a finished run's replicas keep their sessions (docs/backend.md)
    dirs = [bench.replica_dir(n, broker, database, group=names[0]) for n in names]
    watch = mqtt_client(broker, ["fhe-edge/backend/+/availability", "fhe-edge/alerts/#"])
    procs = [bench.start(d, cores[i]) for i, d in enumerate(dirs)]
    pub = None
    try:
        wait_online(watch, names)
        pub = mqtt_client(broker)
        t0 = time.time() - bench.rounds * spacing - 5
        killed = None
        start = time.perf_counter()
        for i, (topic, data) in enumerate(bench.messages(t0, spacing)):
            pub.publish(topic, data, qos=1)
            if pace:
                time.sleep(pace)
            if kill_at is not None and i == kill_at:
                procs[0].send_signal(signal.SIGKILL)
                procs[0].wait()
                killed = time.perf_counter() - start
        if killed is not None:  # the survivor finishes its share; then the killed one comes back
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                processed, rejected, *_ = db_counts(pg, dbname)
                time.sleep(2)
                if db_counts(pg, dbname)[0] == processed:
                    break
            procs[0] = bench.start(dirs[0], cores[0])
        deadline = time.monotonic() + 900
        while True:
            processed, rejected, seen, unpublished = db_counts(pg, dbname)
            if processed >= bench.total and unpublished == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"stream not finished: {processed}/{bench.total} processed, {rejected}")
            time.sleep(0.05)
        elapsed = time.perf_counter() - start
        time.sleep(2)   # duplicates or stragglers would show now
        processed, rejected, seen, unpublished = db_counts(pg, dbname)
        with watch.lock:
            published = [json.loads(p) for t, p, _ in watch.received if t.startswith("fhe-edge/alerts/")]
        keys = [(a["id"], a["event_no"]) for a in published]
        with pg.connect(dbname) as c:
            split = c.execute("SELECT COUNT(*) FROM (SELECT camera FROM seen GROUP BY camera "
                              "HAVING COUNT(DISTINCT replica) > 1) x").fetchone()[0]
        result = {"cameras_decided_by_both_replicas": split, "replicas": names, "results": bench.total, "processed": processed, "seen_rows": seen,
                  "rejected": rejected, "lost": bench.total - processed, "alerts_stored": sum(map(len, alert_shapes(pg, dbname).values())),
                  "alert_messages": len(keys), "alert_duplicates_on_broker": len(keys) - len(set(keys)),
                  "unpublished": unpublished, "seconds": round(elapsed, 1),
                  "results_per_s": round(bench.total / elapsed, 1)}
        if killed is not None:
            result["killed_after_s"] = round(killed, 1)
        shapes = alert_shapes(pg, dbname)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        for c in (pub, watch):
            if c is not None:
                c.disconnect()
                c.loop_stop()
    return result, shapes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateways", type=int, default=20)
    ap.add_argument("--cameras", type=int, default=5, help="cameras per gateway")
    ap.add_argument("--results", type=int, default=2000)
    ap.add_argument("--rate", type=float, default=40.0, help="results/s published in the exact and kill runs")
    ap.add_argument("--no-pin", action="store_true", help="do not pin the replicas to cores")
    ap.add_argument("--skip-scaling", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    bench = Bench(args, work)
    spacing = len(bench.cameras) / args.rate      # a camera's results this far apart
    out = {"gateways": args.gateways, "cameras": len(bench.cameras), "results": bench.total,
           "paced_rate_per_s": args.rate, "camera_interval_s": round(spacing, 2)}
    # The whole input may sit in the broker at once (scaling run): Mosquitto's default per-session
    # queue (1000 QoS 1 messages) would drop the rest.
    with Mosquitto(extra_config="max_queued_messages 100000") as broker, PostgresServer(durable=True) as pg:
        one, shapes_one = run_stream(bench, pg, broker, ["solo"], spacing=spacing, pace=1 / args.rate)
        two, shapes_two = run_stream(bench, pg, broker, ["rep-a", "rep-b"], spacing=spacing, pace=1 / args.rate)
        differ = sorted(c for c in set(shapes_one) | set(shapes_two) if shapes_one.get(c) != shapes_two.get(c))
        out["exact"] = {"one_replica": one, "two_replicas": two, "cameras_with_alerts": len(shapes_one),
                        "cameras_whose_alerts_differ": differ}
        print(json.dumps(out["exact"], default=str), file=sys.stderr, flush=True)
        kill, shapes_kill = run_stream(bench, pg, broker, ["kill-a", "kill-b"], spacing=spacing, pace=1 / args.rate,
                             kill_at=bench.total // 2)
        out["kill"] = kill
        out["kill"]["cameras_whose_alerts_differ_from_one_replica"] = sorted(
            c for c in set(shapes_one) | set(shapes_kill) if shapes_one.get(c) != shapes_kill.get(c))
        print(json.dumps(kill, default=str), file=sys.stderr, flush=True)
        if not args.skip_scaling:
            cores = (None, None) if args.no_pin else (0, 1)
            s1, _ = run_stream(bench, pg, broker, ["fast-solo"], spacing=spacing, pace=0, cores=(cores[0],))
            s2, _ = run_stream(bench, pg, broker, ["fast-a", "fast-b"], spacing=spacing, pace=0, cores=cores)
            out["scaling"] = {"one": s1, "two": s2, "speedup": round(s2["results_per_s"] / s1["results_per_s"], 2),
                              "pinned": not args.no_pin}
    print(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
