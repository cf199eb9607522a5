"""Per-camera counts of dropped results over the last minutes, for the retained camera state.

Without them a camera whose every result is refused (say `implausible_output` while frame timing
is off) just goes quiet on the dashboard. Only reasons decided after the checks are counted here:
the message came from an allowed gateway for a camera it may use (backend_decryptor/checks.py),
so its camera id is not an invention and cannot create state for cameras that do not exist.
Kept in memory per replica (each replica reports its own drops; they are an operator's signal,
not a record - the history's `rejections` table and the Prometheus counter count every drop).
"""
from __future__ import annotations

import time
from collections import Counter

# Reasons a result can be dropped for after it passed the checks (docs/backend.md).
VISIBLE = frozenset({"decrypt_failed", "implausible_output", "bad_output", "internal_error"})
BUCKET_S = 60.0


class DropWindow:
    def __init__(self, window_s: float = 300.0, clock=time.time):
        self.window_s = window_s
        self.clock = clock
        self._buckets: dict[str, dict[int, Counter]] = {}   # camera -> minute -> reason counts
        self._last: dict[str, float] = {}

    def record(self, camera: str, reason: str) -> None:
        now = self.clock()
        buckets = self._buckets.setdefault(camera, {})
        buckets.setdefault(int(now // BUCKET_S), Counter())[reason] += 1
        self._last[camera] = now
        self._expire(camera, now)

    def _expire(self, camera: str, now: float) -> None:
        oldest = int((now - self.window_s) // BUCKET_S) + 1   # buckets wholly inside the window
        buckets = self._buckets.get(camera, {})
        for minute in [m for m in buckets if m < oldest]:
            del buckets[minute]

    def summary(self, camera: str) -> dict:
        """{"count", "reasons": {reason: count}, "window_s", "last": time of the last drop or None}"""
        self._expire(camera, self.clock())
        total: Counter = Counter()
        for counts in self._buckets.get(camera, {}).values():
            total.update(counts)
        return {"count": sum(total.values()), "reasons": dict(sorted(total.items())),
                "window_s": self.window_s, "last": self._last.get(camera) if total else None}
