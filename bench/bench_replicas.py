"""Two backend replicas on one PostgreSQL: the issue-13 targets (not part of the test run).

    .venv/bin/python bench/bench_replicas.py [--gateways 20] [--cameras 5] [--results 2000]
        [--rate 40] [--no-pin] [--only scaling] [--repeat 3] [--backends postgresql,sqlite]
        [--synchronous-commit on|off] [--compare /work/main] [--batch-max N] [--batch-wait S]

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
3. scaling, for each backend in --backends (PostgreSQL; SQLite = the replicas of ONE host sharing
   one state.db), --repeat times, one replica and two side by side in each repetition: the whole
   input published at once; results/s; each replica (its process and its decryption worker)
   pinned to its own core with taskset (replica 1: core 0, replica 2: core 1; unless --no-pin).
   The broker, PostgreSQL and this process (publisher, progress polls) are NOT pinned: on a
   2-core machine they share the replicas' cores, so the results/s ratio is bounded by the
   machine, not by the replicas. Hence also CPU seconds per result of each part (from /proc,
   children included), whose 1-vs-2 ratio is what carries over to replicas on their own hosts
   (1.0 = a second replica costs no extra work per result), and the database time per result:
   wall time in the storage's calls, measured inside each replica (replica_storage_timer.py).
   --compare TREE runs the same, interleaved, with replicas of another source tree (before vs
   after a change, in one session on one loaded machine).
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

import statistics

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_backend import CARD, MODEL_ID, build_model  # noqa: E402
from protected_nn import api, envelope, gateway_key  # noqa: E402
from tests.support.mosquitto import Mosquitto  # noqa: E402
from tests.support.postgres import PostgresServer  # noqa: E402
from bench.replicas_measure import (PostgresState, SqliteState, alert_shapes, cpu_seconds,  # noqa: E402
                                    storage_timings)

RULES = {"crowd": {"threshold": 10, "hysteresis": 2, "consecutive": 2, "levels": {"low": 0, "medium": 10, "high": 18}},
         "incident": {"probability": 0.8, "consecutive": 2, "clear_consecutive": 2, "cooldown": "10s"}}
CLI = [sys.executable, "-m", "backend_decryptor.cli"]
TIMED_CLI = [sys.executable, str(ROOT / "bench" / "replica_storage_timer.py")]
NETWORK_THREAD_CALLS = {"is_seen", "bind_camera", "rate_limit", "seen_and_rate_limit"}


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

    def replica_dir(self, name: str, broker, database: dict | str, group: str, tree: Path = ROOT) -> Path:
        d = self.work / name
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        cli("models", "--store", str(d / "store"), "import-keys", str(self.work / "bench.keys"))
        (d / "alert-rules.yaml").write_text(yaml.safe_dump(RULES, sort_keys=False))  # levels in order
        if tree == ROOT and (self.args.batch_max is not None or self.args.batch_wait is not None):
            database = {"url": database} if isinstance(database, str) else dict(database)
            database.update({k: v for k, v in (("batch_max", self.args.batch_max),
                                               ("batch_wait", self.args.batch_wait)) if v is not None})
        cfg = {"store": str(d / "store"), "database": database,
               "mqtt": {"host": broker.host, "port": broker.port, "client_id": name, "max_in_flight": 32,
                        "session_expiry": 600, "shared_group": group},
               "checks": {"allowed_gateways": ["gw-*"], "max_message_bytes": 1 << 20,
                          "gateway_keys": {g: gateway_key.public_key_text(k) for g, k in self.gateways.items()},
                          "gateway_cameras": {g: [c for gg, c in self.cameras if gg == g] for g in self.gateways}},
               # the shared bucket is paid for (one statement per message) but never refuses here
               "limits": {"per_gateway_rate": 1000, "per_gateway_burst": 100000}, "decrypt": {"workers": 1},
               "alerts": {"rules_file": "alert-rules.yaml", "state_interval": 0}, "log_level": "WARNING"}
        (d / "backend.yaml").write_text(yaml.safe_dump(cfg))
        return d

    def start(self, d: Path, core: int | None, tree: Path = ROOT) -> subprocess.Popen:
        """A replica; `tree` = the source tree it runs (this one, or --compare's)."""
        pin = ["taskset", "-c", str(core)] if core is not None and shutil.which("taskset") else []
        return subprocess.Popen([*pin, *TIMED_CLI, str(d / "storage-timings.json"), "run", "--config",
                                 str(d / "backend.yaml")], cwd=tree,
                                stdout=subprocess.DEVNULL, stderr=open(d / "log", "a"),
                                env={**os.environ, "PYTHONPATH": str(tree)})

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


def storage_for(bench, pg, backend: str, run: str):
    """(the replicas' `database:` section, a reader of that state) for one run."""
    if backend == "sqlite":   # replicas of one host: one state file beside their working dirs
        path = bench.work / f"{run}-state.db"
        return str(path), SqliteState(path)
    dbname = pg.fresh_database()
    return ({**pg.database_config(dbname), "sslmode": "disable", "synchronous_commit": bench.args.synchronous_commit},
            PostgresState(pg, dbname))


def per_result(before: dict, after: dict, processed: int) -> dict:
    """Storage ms per result from two snapshots of the replicas' timings: wall time per method,
    per thread, and the client's CPU time in the calls."""
    wall, cpu = {}, 0.0
    for k, (n, sec, c) in after["calls"].items():
        n0, s0, c0 = before["calls"].get(k, (0, 0.0, 0.0))
        if n > n0:
            wall[k] = round(1000 * (sec - s0) / processed, 3)
            cpu += 1000 * (c - c0) / processed
    n0, n1 = before["calls"].get("apply_batch", (0,))[0], after["calls"].get("apply_batch", (0,))[0]
    return {"results_per_batch": round(processed / (n1 - n0), 2) if n1 > n0 else 1.0,
            "total": round(sum(wall.values()), 3),
            "network_thread": round(sum(v for k, v in wall.items() if k in NETWORK_THREAD_CALLS), 3),
            "decision_thread": round(sum(v for k, v in wall.items() if k not in NETWORK_THREAD_CALLS), 3),
            "client_cpu": round(cpu, 3), "by_call": wall}


def run_stream(bench, pg, broker, names, *, spacing, pace, kill_at=None, cores=(None, None), backend="postgresql",
               tree: Path = ROOT):
    """Start replicas (of source tree `tree`), publish the input, wait until all is handled;
    returns (result dict, alert shapes)."""
    database, state = storage_for(bench, pg, backend, names[0])
    # each run its own shared group: a finished run's replicas keep their sessions (docs/backend.md)
    dirs = [bench.replica_dir(n, broker, database, group=names[0], tree=tree) for n in names]
    timing_files = [d / "storage-timings.json" for d in dirs]
    watch = mqtt_client(broker, ["fhe-edge/backend/+/availability", "fhe-edge/alerts/#"])
    procs = [bench.start(d, cores[i], tree) for i, d in enumerate(dirs)]
    pub = None

    def cpu():
        groups = {n: [p.pid] for n, p in zip(names, procs)}
        groups.update({"postgresql": [pg.proc.pid], "broker": [broker.proc.pid]})
        out = cpu_seconds(groups)
        t = os.times()
        out["publisher"] = t.user + t.system   # this process: publishing, progress polls
        return out
    try:
        wait_online(watch, names)
        pub = mqtt_client(broker)
        t0 = time.time() - bench.rounds * spacing - 5
        killed = None
        time.sleep(1.0)   # the replicas' timings of their start are written out
        timings0, cpu0 = storage_timings(timing_files), cpu()
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
                processed = state.progress()[0]
                time.sleep(2)
                if state.progress()[0] == processed:
                    break
            procs[0] = bench.start(dirs[0], cores[0], tree)
        deadline = time.monotonic() + 900
        while True:
            processed, unpublished = state.progress()
            if processed >= bench.total and unpublished == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"stream not finished: {processed}/{bench.total} processed, {state.counts()}")
            time.sleep(0.25)
        elapsed = time.perf_counter() - start
        cpu1 = cpu()
        time.sleep(2)   # duplicates or stragglers would show now; the timings are written out
        timings1 = storage_timings(timing_files)
        processed, rejected, seen, unpublished = state.counts()
        with watch.lock:
            published = [json.loads(p) for t, p, _ in watch.received if t.startswith("fhe-edge/alerts/")]
        keys = [(a["id"], a["event_no"]) for a in published]
        shapes = alert_shapes(state.alert_rows())
        result = {"backend": backend, "replicas": names, "results": bench.total, "processed": processed,
                  "cameras_decided_by_both_replicas": state.cameras_decided_by_both(), "seen_rows": seen,
                  "rejected": rejected, "lost": bench.total - processed, "alerts_stored": sum(map(len, shapes.values())),
                  "alert_messages": len(keys), "alert_duplicates_on_broker": len(keys) - len(set(keys)),
                  "unpublished": unpublished, "seconds": round(elapsed, 1),
                  "results_per_s": round(bench.total / elapsed, 1)}
        if killed is not None:
            result["killed_after_s"] = round(killed, 1)
        else:   # CPU and storage time over the measured stream (a restarted replica's would be partial)
            decided = timings1["processed"] - timings0["processed"]
            cpu_ms = {k: round(1000 * (cpu1[k] - cpu0.get(k, 0.0)) / bench.total, 3) for k in cpu1}
            cpu_ms["replicas"] = round(sum(cpu_ms[n] for n in names), 3)
            cpu_ms["all"] = round(sum(v for k, v in cpu_ms.items() if k not in names and k != "all"), 3)
            result["cpu_ms_per_result"] = cpu_ms
            result["storage_ms_per_result"] = per_result(timings0, timings1, max(decided, 1))
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
        state.close()
    return result, shapes


def scaling(bench, pg, broker, args, spacing) -> dict:
    """--repeat x (one replica, then two) per backend and per source tree (this one, and
    --compare's if given: side by side, interleaved); medians and ratios."""
    cores = (None, None) if args.no_pin else (0, 1)
    trees = [("this", ROOT)] + ([("compare", Path(args.compare).resolve())] if args.compare else [])
    runs: dict[str, dict[str, list]] = {f"{b}@{t}": {"one": [], "two": []} for b in args.backends for t, _ in trees}
    for r in range(args.repeat):
        for backend in args.backends:
            for label, tree in trees:
                tag = f"{backend[:2]}{label[0]}{r}"
                one, _ = run_stream(bench, pg, broker, [f"solo-{tag}"], spacing=spacing, pace=0,
                                    cores=(cores[0],), backend=backend, tree=tree)
                two, _ = run_stream(bench, pg, broker, [f"a-{tag}", f"b-{tag}"], spacing=spacing, pace=0,
                                    cores=cores, backend=backend, tree=tree)
                for k, v in (("one", one), ("two", two)):
                    if v["lost"] or v["rejected"]:
                        raise RuntimeError(f"scaling run lost or rejected results: {v}")
                    runs[f"{backend}@{label}"][k].append(v)
                print(json.dumps({"repeat": r, "backend": backend, "tree": str(tree), "one": one, "two": two},
                                 default=str), file=sys.stderr, flush=True)
    out: dict = {"pinned": not args.no_pin, "repeat": args.repeat, "load_average_after": os.getloadavg(),
                 "trees": {label: str(tree) for label, tree in trees}}
    med = statistics.median
    for backend, by in runs.items():
        rps = {k: [v["results_per_s"] for v in by[k]] for k in by}
        cpu = {k: [v["cpu_ms_per_result"]["replicas"] for v in by[k]] for k in by}
        cpu_all = {k: [v["cpu_ms_per_result"]["all"] for v in by[k]] for k in by}
        db = {k: [v["storage_ms_per_result"]["total"] for v in by[k]] for k in by}
        db_cpu = {k: [v["storage_ms_per_result"]["client_cpu"] for v in by[k]] for k in by}
        db_server = {k: [v["cpu_ms_per_result"]["postgresql"] for v in by[k]] for k in by}
        per_batch = {k: [v["storage_ms_per_result"]["results_per_batch"] for v in by[k]] for k in by}
        out[backend] = {
            "results_per_batch": {k: med(x) for k, x in per_batch.items()},
            "results_per_s": {k: med(x) for k, x in rps.items()}, "results_per_s_runs": rps,
            "speedup_median_of_pairs": med(t / o for o, t in zip(rps["one"], rps["two"])),
            "speedup_pairs": [round(t / o, 2) for o, t in zip(rps["one"], rps["two"])],
            "replica_cpu_ms_per_result": {k: med(x) for k, x in cpu.items()},
            "all_cpu_ms_per_result": {k: med(x) for k, x in cpu_all.items()},
            # >= 1.7 wanted: results/s two replicas on their own hosts would reach vs one
            "cpu_scaling_two_vs_one": med(2 * o / t for o, t in zip(cpu["one"], cpu["two"])),
            "storage_ms_per_result": {k: med(x) for k, x in db.items()},
            "storage_client_cpu_ms_per_result": {k: med(x) for k, x in db_cpu.items()},
            "postgresql_cpu_ms_per_result": {k: med(x) for k, x in db_server.items()},
            "runs": by}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateways", type=int, default=20)
    ap.add_argument("--cameras", type=int, default=5, help="cameras per gateway")
    ap.add_argument("--results", type=int, default=2000)
    ap.add_argument("--rate", type=float, default=40.0, help="results/s published in the exact and kill runs")
    ap.add_argument("--no-pin", action="store_true", help="do not pin the replicas to cores")
    ap.add_argument("--only", choices=("all", "exact", "scaling"), default="all")
    ap.add_argument("--repeat", type=int, default=3, help="scaling: repetitions of one vs two replicas")
    ap.add_argument("--backends", default="postgresql,sqlite", type=lambda v: v.split(","),
                    help="scaling: postgresql and/or sqlite")
    ap.add_argument("--synchronous-commit", default="on", choices=("on", "off"),
                    help="PostgreSQL: database.synchronous_commit of the replicas (default on, the config default)")
    ap.add_argument("--compare", help="scaling: also run replicas of this source tree (e.g. /work/main), "
                                      "interleaved with this one's, with its default config")
    ap.add_argument("--batch-max", type=int, help="this tree's replicas: database.batch_max (default: config's)")
    ap.add_argument("--batch-wait", type=float, help="this tree's replicas: database.batch_wait in s")
    args = ap.parse_args()
    args.synchronous_commit = args.synchronous_commit == "on"
    work = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    bench = Bench(args, work)
    spacing = len(bench.cameras) / args.rate      # a camera's results this far apart
    out = {"gateways": args.gateways, "cameras": len(bench.cameras), "results": bench.total,
           "paced_rate_per_s": args.rate, "camera_interval_s": round(spacing, 2), "cores": os.cpu_count(),
           "postgresql_synchronous_commit": args.synchronous_commit}
    # The whole input may sit in the broker at once (scaling run): Mosquitto's default per-session
    # queue (1000 QoS 1 messages) would drop the rest.
    with Mosquitto(extra_config="max_queued_messages 100000") as broker, PostgresServer(durable=True) as pg:
        if args.only in ("all", "exact"):
            one, shapes_one = run_stream(bench, pg, broker, ["solo"], spacing=spacing, pace=1 / args.rate)
            two, shapes_two = run_stream(bench, pg, broker, ["rep-a", "rep-b"], spacing=spacing, pace=1 / args.rate)
            differ = sorted(c for c in set(shapes_one) | set(shapes_two) if shapes_one.get(c) != shapes_two.get(c))
            out["exact"] = {"one_replica": one, "two_replicas": two, "cameras_with_alerts": len(shapes_one),
                            "cameras_whose_alerts_differ": differ}
            print(json.dumps(out["exact"], default=str), file=sys.stderr, flush=True)
            kill, shapes_kill = run_stream(bench, pg, broker, ["kill-a", "kill-b"], spacing=spacing,
                                           pace=1 / args.rate, kill_at=bench.total // 2)
            out["kill"] = kill
            out["kill"]["cameras_whose_alerts_differ_from_one_replica"] = sorted(
                c for c in set(shapes_one) | set(shapes_kill) if shapes_one.get(c) != shapes_kill.get(c))
            print(json.dumps(kill, default=str), file=sys.stderr, flush=True)
        if args.only in ("all", "scaling"):
            out["scaling"] = scaling(bench, pg, broker, args, spacing)
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
