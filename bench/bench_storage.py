"""Storage cost per result, SQLite vs PostgreSQL, without decryption or MQTT (not part of the tests).

    .venv/bin/python bench/bench_storage.py [--database local | postgresql://...] [--results 300] [--rounds 5]

Per result the backend's storage does the replay check (network thread) and one `apply`
transaction (seen + locked camera state + counters; every 10th result also stores an alert
event). Each round times N results on each contender in turn (interleaved, so a loaded machine
hits all alike); the medians over rounds are printed. Contenders: SQLite (WAL, synchronous=NORMAL:
the default), PostgreSQL with synchronous_commit on (the default) and off. `local` starts a
throwaway durable PostgreSQL (fsync on) from tests/support/postgres.py on loopback.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend_decryptor.alerts import AlertEvent  # noqa: E402
from backend_decryptor.config import BackendConfig  # noqa: E402
from backend_decryptor.storage import open_storage  # noqa: E402


def decide(seq: int):
    def run(old):
        n = (old or {}).get("n", 0) + 1
        events = [AlertEvent(f"a{seq}", "cam", None, "crowd", "raised", "high", 1.0, 1.0, {"event_no": 1})
                  ] if seq % 10 == 0 else []
        return {"n": n, "streak": seq % 7}, events
    return run


def one_round(db, n: int, seq0: int) -> float:
    """ms per result: is_seen + apply over n results of 8 cameras."""
    t = time.perf_counter()
    for seq in range(seq0, seq0 + n):
        camera = f"cam-{seq % 8}"
        db.is_seen("gw-1", camera, seq)
        db.apply("gw-1", camera, seq, time.time(), None, decide(seq))
    return 1000 * (time.perf_counter() - t) / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database", default="local", help="'local' (default) or a postgresql:// URL")
    ap.add_argument("--sslmode", default="prefer")
    ap.add_argument("--results", type=int, default=300, help="results per contender per round")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    server = None
    if args.database == "local":
        from tests.support.postgres import PostgresServer
        server = PostgresServer(durable=True).start()
        pg = server.database_config(server.fresh_database())
    else:
        pg = {"url": args.database, "sslmode": args.sslmode}
    work = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    contenders = {
        "sqlite": BackendConfig.model_validate({"state_db": str(work / "state.db")}),
        "postgres_sync_commit_on": BackendConfig.model_validate({"database": pg}),
        "postgres_sync_commit_off": BackendConfig.model_validate({"database": {**pg, "synchronous_commit": False}}),
    }
    dbs = {name: open_storage(cfg, replica=f"bench-{name}") for name, cfg in contenders.items()}
    times: dict[str, list[float]] = {name: [] for name in dbs}
    seq0 = int(time.time() * 1e6)  # a reused database remembers earlier runs' sequences
    try:
        for r in range(args.rounds):
            for name, db in dbs.items():
                times[name].append(one_round(db, args.results, seq0 + r * args.results))
    finally:
        for db in dbs.values():
            db.close()
        if server is not None:
            server.stop()
    med = {name: statistics.median(t) for name, t in times.items()}
    out = {f"{name}_ms_per_result_median": round(m, 3) for name, m in med.items()}
    out.update({f"{name}_results_per_s": round(1000 / m, 1) for name, m in med.items()})
    out["rounds"], out["results_per_round"] = args.rounds, args.results
    out["all_rounds_ms"] = {name: [round(x, 3) for x in t] for name, t in times.items()}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
