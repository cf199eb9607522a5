"""What bench_replicas.py measures besides throughput: CPU seconds of process trees (from /proc)
and the state of a run's database, PostgreSQL or the replicas' shared SQLite file."""
from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds so far) of a live process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()   # after "pid (comm) "
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK


def cpu_seconds(roots: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds (user + system) of each named group of process trees, children included
    (a replica's decryption worker, PostgreSQL's backends), counting only live processes."""
    stats = {}
    for d in os.listdir("/proc"):
        if d.isdigit() and (s := _stat(int(d))) is not None:
            stats[int(d)] = s
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    out = {}
    for name, pids in roots.items():
        total, todo, done = 0.0, list(pids), set()
        while todo:
            pid = todo.pop()
            if pid in done or pid not in stats:
                continue
            done.add(pid)
            total += stats[pid][1]
            todo += children.get(pid, [])
        out[name] = total
    return out


class PostgresState:
    def __init__(self, pg, dbname: str):
        self.pg, self.dbname = pg, dbname
        self.conn = pg.connect(dbname)

    def progress(self) -> tuple[int, int]:
        """(results processed, alert rows not yet published)."""
        c = self.conn
        return (c.execute("SELECT COALESCE(SUM(messages), 0)::bigint FROM counters").fetchone()[0],
                c.execute("SELECT COUNT(*) FROM alerts WHERE published = 0").fetchone()[0])

    def counts(self) -> tuple[int, dict, int, int]:
        """(processed, rejections by reason, seen rows, unpublished alert rows)."""
        c = self.conn
        processed, unpublished = self.progress()
        return (processed, dict(c.execute("SELECT reason, count FROM rejections").fetchall()),
                c.execute("SELECT COUNT(*) FROM seen").fetchone()[0], unpublished)

    def cameras_decided_by_both(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM (SELECT camera FROM seen GROUP BY camera "
                                 "HAVING COUNT(DISTINCT replica) > 1) x").fetchone()[0]

    def alert_rows(self):
        return self.conn.execute("SELECT camera, id, type, event, level, time, meta FROM alerts "
                                 "ORDER BY time, row").fetchall()

    def close(self) -> None:
        self.conn.close()


class SqliteState(PostgresState):
    """The replicas' shared state.db (read-only connection beside their WAL writers)."""

    def __init__(self, path: Path):
        self.path = path
        self.conn = None

    def _c(self):
        if self.conn is None:
            if not self.path.exists():
                raise FileNotFoundError(self.path)
            self.conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
        return self.conn

    def progress(self) -> tuple[int, int]:
        try:
            c = self._c()
        except FileNotFoundError:
            return 0, 0
        return (c.execute("SELECT COALESCE(SUM(messages), 0) FROM counters").fetchone()[0],
                c.execute("SELECT COUNT(*) FROM alerts WHERE published = 0").fetchone()[0])

    def counts(self) -> tuple[int, dict, int, int]:
        processed, unpublished = self.progress()
        c = self._c()
        return (processed, dict(c.execute("SELECT reason, count FROM rejections").fetchall()),
                c.execute("SELECT COUNT(*) FROM seen").fetchone()[0], unpublished)

    def cameras_decided_by_both(self) -> int:
        return self._c().execute("SELECT COUNT(*) FROM (SELECT camera FROM seen GROUP BY camera "
                                 "HAVING COUNT(DISTINCT replica) > 1)").fetchone()[0]

    def alert_rows(self):
        return self._c().execute("SELECT camera, id, type, event, level, time, meta FROM alerts "
                                 "ORDER BY time, row").fetchall()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def alert_shapes(rows) -> dict[str, list]:
    """Per camera, the alert events as comparable tuples: the result's sequence, not its capture
    time (each run has its own t0), and which events share an alert (not the random ids)."""
    out: dict[str, list] = {}
    ids: dict[str, dict] = {}
    for cam, id_, type_, event, level, t, meta in rows:
        first = ids.setdefault(cam, {})
        meta = json.loads(meta)
        out.setdefault(cam, []).append((type_, event, level, meta["sequence"], meta["event_no"],
                                        first.setdefault(id_, len(first))))
    return out


def storage_timings(paths: list[Path]) -> dict:
    """The replicas' storage timings (replica_storage_timer.py) summed: per method
    [calls, wall s, thread CPU s]."""
    calls: dict[str, list] = {}
    processed = 0
    for p in paths:
        if not p.exists():
            continue
        data = json.loads(p.read_text())
        processed += data["processed"]
        for k, v in data["calls"].items():
            c = calls.setdefault(k, [0, 0.0, 0.0])
            for i, x in enumerate(v):
                c[i] += x
    return {"processed": processed, "calls": calls}
