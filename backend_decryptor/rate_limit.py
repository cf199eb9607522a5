"""Token buckets: the per-gateway message limit, and rate-limited logging of dropped messages.

Per-gateway limit (docs/threat-model.md, "the backend as a decryption oracle"): every message that
would be decrypted costs its gateway one token; a gateway holds at most `burst` tokens and earns
`rate` per second. Over-limit messages are dropped (`rate_limited`) BEFORE any decryption, which
caps what a hostile gateway can learn from the alert stream at about `rate` probes per second.

The bucket's clock is the envelopes' CAPTURE TIME, not the arrival time. Why: a gateway that
was cut off from the broker (or a backend that was restarted) delivers its backlog all at once;
with an arrival-time bucket that legitimate backlog would be dropped beyond `burst`. Refilling by
how far the gateway's capture times advance lets a backlog through at any delivery speed, as long
as it was produced at no more than `rate` per second. A gateway cannot cheat by claiming later
capture times: the skew check (run before this one) refuses times more than `max_clock_skew`
ahead of the backend clock, so the capture-time horizon advances no faster than the wall clock
after a one-off jump, which the `burst` cap bounds (at most 2 x burst extra messages, once).
Capture times that do not advance (out of order, or a clock stepped back) earn nothing.

Several replicas: `GatewayRateLimiter` counts in this process only (N replicas would let a
gateway through N times the rate); `StoredRateLimiter` is the same bucket kept in the shared
database, one row per gateway updated atomically (storage/postgres.py), so the limit holds for
the whole group of replicas.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable


@dataclass
class _Bucket:
    tokens: float
    horizon: float   # latest capture time already credited


class GatewayRateLimiter:
    """Not thread-safe: the checks run in the MQTT network thread only."""

    def __init__(self, rate: float, burst: int, max_clock_skew: float, prune_every: float = 60.0):
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = float(burst)
        # A bucket whose horizon is older than this behind the backend clock would be full for any
        # message the skew check still accepts, i.e. it is the same as a fresh one: safe to forget.
        self._forget_after = max_clock_skew + self.burst / rate
        self._prune_every = prune_every
        self._last_prune = float("-inf")
        self._buckets: dict[str, _Bucket] = {}

    def allow(self, gateway: str, capture_time: float, now: float) -> bool:
        """Take one token for `gateway` if it has one (`now` = backend clock, for pruning only)."""
        self._prune(now)
        b = self._buckets.get(gateway)
        if b is None:
            b = self._buckets[gateway] = _Bucket(self.burst, capture_time)
        elif capture_time > b.horizon:
            b.tokens = min(self.burst, b.tokens + (capture_time - b.horizon) * self.rate)
            b.horizon = capture_time
        if b.tokens < 1.0:
            return False
        b.tokens -= 1.0
        return True

    def _prune(self, now: float) -> None:
        if now - self._last_prune < self._prune_every:
            return
        self._last_prune = now
        cutoff = now - self._forget_after
        for gateway in [g for g, b in self._buckets.items() if b.horizon < cutoff]:
            del self._buckets[gateway]

    def __len__(self) -> int:
        return len(self._buckets)


class StoredRateLimiter:
    """The same bucket as GatewayRateLimiter, kept by the storage: `take(gateway, capture_time,
    rate, burst) -> bool` refills, caps and debits in one atomic statement; `forget(before)`
    deletes buckets whose horizon is older (they would be full anyway)."""

    def __init__(self, rate: float, burst: int, max_clock_skew: float,
                 take: Callable[[str, float, float, float], bool], forget: Callable[[float], None],
                 prune_every: float = 60.0, take_unseen: Callable | None = None):
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = float(burst)
        self._take, self._forget = take, forget
        # take_unseen(gateway, camera, sequence, capture_time, rate, burst) -> "replayed" |
        # "rate_limited" | None: the stored replay check and the debit in one round trip
        self._take_unseen = take_unseen
        self._forget_after = max_clock_skew + self.burst / rate
        self._prune_every = prune_every
        self._last_prune = float("-inf")

    def _maybe_forget(self, now: float) -> None:
        if now - self._last_prune >= self._prune_every:
            self._last_prune = now
            self._forget(now - self._forget_after)

    def allow(self, gateway: str, capture_time: float, now: float) -> bool:
        self._maybe_forget(now)
        return self._take(gateway, capture_time, self.rate, self.burst)

    @property
    def checks_seen(self) -> bool:
        return self._take_unseen is not None

    def allow_unseen(self, gateway: str, camera: str, sequence: int, capture_time: float, now: float) -> str | None:
        """The replay check against the storage, then (only if not seen) allow(): one round trip."""
        self._maybe_forget(now)
        return self._take_unseen(gateway, camera, sequence, capture_time, self.rate, self.burst)


class LogLimiter:
    """At most `burst` log lines per key, refilled at `per_second`; the lines held back are counted
    and reported by the next line of that key or by `flush()`, so a flood of bad messages (or of
    rate-limited ones) cannot flood the log while no drop goes unmentioned."""

    def __init__(self, logger: logging.Logger, per_second: float = 1.0, burst: int = 10,
                 clock=time.monotonic):
        self.log = logger
        self.per_second = per_second
        self.burst = float(burst)
        self.clock = clock
        self._state: dict[str, list[float]] = {}     # key -> [tokens, last refill time]
        self._suppressed: dict[str, int] = {}
        self._last_flush = clock()

    def warning(self, key: str, msg: str, *args) -> bool:
        """Log `msg % args` unless `key` is over its budget; True if it was logged."""
        now = self.clock()
        tokens, last = self._state.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.per_second)
        if tokens < 1.0:
            self._state[key] = [tokens, now]
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._state[key] = [tokens - 1.0, now]
        held = self._suppressed.pop(key, 0)
        if held:
            msg += " (%d more '%s' drops not logged)"
            args = (*args, held, key)
        self.log.warning(msg, *args)
        return True

    def flush(self, every: float = 10.0) -> None:
        """Report every key's held-back lines, at most once per `every` seconds (called from the
        housekeeping, so a flood that stops still gets its summary line)."""
        now = self.clock()
        if now - self._last_flush < every:
            return
        self._last_flush = now
        for key, held in sorted(self._suppressed.items()):
            self.log.warning("%d more '%s' drops not logged (log rate limit)", held, key)
        self._suppressed.clear()
