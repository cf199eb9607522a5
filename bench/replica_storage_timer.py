"""`backend-decryptor` with its storage timed: what bench_replicas.py runs as a replica.

    python bench/replica_storage_timer.py TIMINGS.json run --config backend.yaml

The real CLI (backend_decryptor.cli.main) in this process; the only change is that the storage
the service opens is wrapped so every call's wall time is added up per method (and per call to
the rate limiter's bucket), written to TIMINGS.json twice a second and when the storage closes:
{"calls": {method: [count, wall seconds, CPU seconds of the calling thread]}, "processed": n}.
Wall time in the calls is what a result waits for the database (round trips, lock waits, the
disk flush of a commit) - plus, on a loaded machine, waiting for a CPU; the thread's CPU time
in them is the client's own work (psycopg, SQLite), which no remote database host takes over.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

# The tree named by PYTHONPATH (bench_replicas.py --compare runs another one's replicas), else this one.
if not os.environ.get("PYTHONPATH"):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


class TimedStorage:
    def __init__(self, inner, out: Path):
        self._inner, self._out = inner, out
        self._lock = threading.Lock()
        self._calls: dict[str, list] = {}
        self._processed = 0
        threading.Thread(target=self._writer, daemon=True).start()

    def _add(self, name: str, seconds: float, cpu: float) -> None:
        with self._lock:
            c = self._calls.setdefault(name, [0, 0.0, 0.0])
            c[0] += 1
            c[1] += seconds
            c[2] += cpu

    def _timed(self, name: str, fn):
        def call(*a, **kw):
            t, cpu = time.perf_counter(), time.thread_time()
            try:
                out = fn(*a, **kw)
            finally:
                self._add(name, time.perf_counter() - t, time.thread_time() - cpu)
            if name == "apply" and out is not None:
                with self._lock:
                    self._processed += 1
            if name == "apply_batch":   # group commit: per result, None = replay, an exception = failed
                with self._lock:
                    self._processed += sum(1 for o in out if o is not None and not isinstance(o, Exception))
            return out
        return call

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if name == "rate_limiter":
            def make(*a, **kw):
                limiter = attr(*a, **kw)
                limiter.allow = self._timed("rate_limit", limiter.allow)
                if getattr(limiter, "checks_seen", False):   # the replay check and the debit in one call
                    limiter.allow_unseen = self._timed("seen_and_rate_limit", limiter.allow_unseen)
                return limiter
            return make
        if name == "close":
            def close():
                attr()
                self.write()
            return close
        return self._timed(name, attr) if callable(attr) else attr

    def write(self) -> None:
        with self._lock:
            data = {"calls": {k: list(v) for k, v in self._calls.items()}, "processed": self._processed}
        tmp = self._out.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self._out)

    def _writer(self) -> None:
        while True:
            time.sleep(0.5)
            self.write()


def main() -> int:
    out = Path(sys.argv[1])
    import backend_decryptor.service as service
    open_storage = service.open_storage
    service.open_storage = lambda cfg, *a, **kw: TimedStorage(open_storage(cfg, *a, **kw), out)
    from backend_decryptor.cli import main as cli_main
    return cli_main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
