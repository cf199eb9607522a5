"""Where the storage's time per result goes, before vs after a change (not part of the tests).

    .venv/bin/python bench/bench_storage_profile.py [--before REF] [--results 300] [--rounds 5]
        [--batches 1,8,32]

Per result it makes the storage calls the service makes (pipeline.py): the replay check and the
token bucket (network thread), `apply` (one alert event every 3rd result) - for this worktree
`apply_batch` of 1, 8 or 32 results (group commit: one transaction per batch) -,
`mark_state_published` and `mark_published` of the previous batch's alerts (decision thread). For every call it reports
wall ms, round trips to the server (from libpq's protocol trace: each time the client sent and
then read), and for the whole result the write transactions (transaction ids the server assigned)
and the CPU ms of the client thread and of the connection's server process.
synchronous_commit on minus off = the time spent waiting for the disk. Contenders, interleaved per round so a loaded machine hits all
alike: SQLite and PostgreSQL (synchronous_commit on and off), each as of git REF (default: the
storage before group commit) and as in this worktree per batch size. PostgreSQL: a throwaway durable
server (fsync on) on loopback, tests/support/postgres.py.
"""
from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backend_decryptor.alerts import AlertEvent  # noqa: E402
from backend_decryptor.config import BackendConfig  # noqa: E402

CALLS = ("is_seen", "take_token", "apply", "mark_state_published", "mark_published")


def load_at(ref: str, module: str):
    """backend_decryptor/storage/<module>.py as of git `ref`, imported under a private name."""
    src = subprocess.run(["git", "show", f"{ref}:backend_decryptor/storage/{module}.py"], cwd=ROOT,
                         check=True, capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory(prefix="storage-before-") as tmp:
        path = Path(tmp) / f"{module}_before.py"
        path.write_text(src)
        spec = importlib.util.spec_from_file_location(f"storage_{module}_before", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    return mod


def decide(seq: int):
    def run(old):
        n = (old or {}).get("n", 0) + 1
        events = [AlertEvent(f"a{seq}", "cam", None, "crowd", "raised", "high", 1.0, 1.0, {"event_no": 1})
                  ] if seq % 3 == 0 else []
        return {"n": n, "streak": seq % 7}, events
    return run


class Trace:
    """libpq's protocol trace of the storage's connection; `round_trips()` = times the client
    sent something and then read the server's answer, since the last call."""

    def __init__(self, conn):
        self.path = Path(tempfile.mkstemp(prefix="pgtrace-")[1])
        self.fd = os.open(self.path, os.O_WRONLY | os.O_TRUNC)
        conn.pgconn.trace(self.fd)
        conn.pgconn.set_trace_flags(psycopg_trace_flags())
        self.pos = 0

    def round_trips(self) -> int:
        ctypes.CDLL(None).fflush(None)  # libpq writes the trace through a buffered FILE
        with open(self.path) as f:
            f.seek(self.pos)
            text = f.read()
            self.pos = f.tell()
        trips, last = 0, None
        for line in text.splitlines():
            direction = line.split("\t", 1)[0].strip()[:1]
            if direction == "B" and last == "F":
                trips += 1
            if direction in "FB":
                last = direction
        return trips


def psycopg_trace_flags():
    from psycopg import pq
    return pq.Trace.SUPPRESS_TIMESTAMPS


def process_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) of a process so far (the server process of a connection)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_round(db, n: int, seq0: int, trace: Trace | None, limiter, server_pid=None,
              batch: int | None = None) -> dict[str, list[float]]:
    """Per call: [ms per result, round trips per result] over n results of 8 cameras; and the CPU
    ms per result of this thread (client) and of the connection's server process (not waiting
    for a CPU or the disk, so steadier than wall time on a loaded machine). batch=None: one
    `apply` per result (a storage without apply_batch); else `apply_batch` of `batch` results
    (the replay check and token bucket still once per result, as the network thread does; with a
    storage whose bucket checks "seen?" too, both in one call, counted as take_token)."""
    from backend_decryptor.storage.base import Decision
    ms = dict.fromkeys(CALLS, 0.0)
    trips = dict.fromkeys(CALLS, 0)
    previous_alerts: list[int] = []

    def timed(name, fn, *a):
        t = time.perf_counter()
        out = fn(*a)
        ms[name] += 1000 * (time.perf_counter() - t)
        if trace is not None:
            trips[name] += trace.round_trips()
        return out
    if trace is not None:
        trace.round_trips()
    cpu0, server0 = time.thread_time(), process_cpu(server_pid)
    step = batch or 1
    for first in range(seq0, seq0 + n, step):
        seqs = range(first, min(first + step, seq0 + n))
        now = time.time()
        for seq in seqs:
            if batch is not None and getattr(limiter, "checks_seen", False):   # both in one round trip
                timed("take_token", limiter.allow_unseen, "gw-1", f"cam-{seq % 8}", seq, now, now)
                continue
            timed("is_seen", db.is_seen, "gw-1", f"cam-{seq % 8}", seq)
            timed("take_token", limiter.allow, "gw-1", now, now)
        if batch is None:
            outs = [timed("apply", db.apply, "gw-1", f"cam-{seq % 8}", seq, now, None, decide(seq))]
        else:
            outs = timed("apply", db.apply_batch, [Decision("gw-1", f"cam-{seq % 8}", seq, now, None, decide(seq))
                                                   for seq in seqs])
        for seq in seqs:
            timed("mark_state_published", db.mark_state_published, f"cam-{seq % 8}", now)
        timed("mark_published", db.mark_published, previous_alerts)
        previous_alerts = [s.row for out in outs for s in out[1]]
    out = {c: [ms[c] / n, trips[c] / n] for c in CALLS}
    out["cpu"] = [1000 * (time.thread_time() - cpu0) / n, 1000 * (process_cpu(server_pid) - server0) / n]
    return out


def next_xid(admin) -> int:
    """The next transaction id the server will assign: only writing transactions take one, so
    the difference over a round is the write transactions of that round (nothing else writes)."""
    return int(admin.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint").fetchone()[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", default="7e2162f", help="git ref of the storage to compare with (one apply per "
                                                          "result; default: before group commit)")
    ap.add_argument("--batches", default="1,8,32", type=lambda v: [int(x) for x in v.split(",")],
                    help="batch sizes of this worktree's apply_batch to measure")
    ap.add_argument("--results", type=int, default=300, help="results per contender per round")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    from backend_decryptor.storage.postgres import PostgresStateDB
    from backend_decryptor.storage.sqlite import StateDB
    from tests.support.postgres import PASSWORD, PostgresServer
    before = {"sqlite": load_at(args.before, "sqlite").StateDB, "postgres": load_at(args.before, "postgres").PostgresStateDB}
    after = {"sqlite": StateDB, "postgres": PostgresStateDB}
    server = PostgresServer(durable=True).start()
    admin = server.connect()
    work = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    dbs, dbnames, limiters, batch_of = {}, {}, {}, {}
    contenders = [("before", before, None)] + [(f"after_b{b}", after, b) for b in args.batches]
    for version, classes, batch in contenders:
        dbs[f"sqlite_{version}"] = classes["sqlite"](work / f"{version}.db", replica=f"sqlite-{version}")
        batch_of[f"sqlite_{version}"] = batch
        for sync in (True, False):
            name = f"postgres_sync_{'on' if sync else 'off'}_{version}"
            dbnames[name] = server.fresh_database()
            batch_of[name] = batch
            cfg = BackendConfig.model_validate({"database": {**server.database_config(dbnames[name]),
                                                             "synchronous_commit": sync}})
            dbs[name] = classes["postgres"](cfg.database.conninfo(name), replica=name, password=PASSWORD)
    per_round: dict[str, list[dict]] = {name: [] for name in dbs}
    trips: dict[str, dict] = {}
    totals = {name: [0, 0] for name in dbnames}   # results, write transactions
    seq0 = int(time.time() * 1e6)
    try:
        # not timed: a warm-up round (camera rows, prepared statements), then one traced round
        # for the round trips per call (tracing costs time)
        for name, db in dbs.items():
            limiters[name] = db.rate_limiter(1e6, 1_000_000, 300.0)
            one_round(db, args.results, seq0, None, limiters[name], batch=batch_of[name])
            if name in dbnames:
                trace = Trace(db._conn())
                trips[name] = one_round(db, args.results, seq0 + args.results, trace, limiters[name],
                                        batch=batch_of[name])
                db._conn().pgconn.untrace()
                os.close(trace.fd)
                trace.path.unlink()
        seq0 += 2 * args.results
        for r in range(args.rounds):
            for name, db in dbs.items():
                x0 = next_xid(admin) if name in dbnames else 0
                pid = db._conn().info.backend_pid if name in dbnames else None
                per_round[name].append(one_round(db, args.results, seq0 + r * args.results, None,
                                                 limiters[name], pid, batch=batch_of[name]))
                if name in dbnames:
                    totals[name][0] += args.results
                    totals[name][1] += next_xid(admin) - x0
    finally:
        for db in dbs.values():
            db.close()
        admin.close()
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    out: dict = {"rounds": args.rounds, "results_per_round": args.results, "before": args.before}
    for name, rounds in per_round.items():
        row = {c: {"ms": round(statistics.median(x[c][0] for x in rounds), 3),
                   "round_trips": round(trips[name][c][1], 2) if name in trips else 0} for c in CALLS}
        total = [sum(x[c][0] for c in CALLS) for x in rounds]
        row["total_ms_per_result_median"] = round(statistics.median(total), 3)
        row["total_round_trips"] = round(sum(v["round_trips"] for k, v in row.items() if k in CALLS), 2)
        row["all_rounds_total_ms"] = [round(t, 3) for t in total]
        row["client_cpu_ms_per_result"] = round(statistics.median(x["cpu"][0] for x in rounds), 3)
        if name in dbnames:
            row["server_cpu_ms_per_result"] = round(statistics.median(x["cpu"][1] for x in rounds), 3)
        if name in totals:
            row["write_transactions_per_result"] = round(totals[name][1] / totals[name][0], 2)
        out[name] = row
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
