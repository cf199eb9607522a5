"""The storage interface the backend uses (one implementation per database) and what they share.

Both implementations keep the same guarantees:
- `apply_batch` is ONE transaction for a batch of results (group commit: one disk flush for all
  of them; `apply` is a batch of one): lock the batch's cameras' rule state rows (in camera
  order, so two replicas locking overlapping sets cannot deadlock), mark each sequence seen (one
  already seen gives None for that result: a replay, or another replica was first), run the rules
  for each result in batch order (a camera appearing twice sees its first result's new state),
  write the new states, the alert events (the outbox) and the counters. So a result is either
  fully handled or not at all, and two replicas never interleave on one camera. A result whose
  `decide` raises gets its exception back and leaves no trace; the others commit.
- The outbox: alert rows start unpublished, leased to the replica that stored them for
  `outbox_lease` seconds, which that replica renews while it lives. `mark_published` closes a
  row once the broker acknowledged it. A row whose lease ran out (its replica died or lost the
  database) is taken over by one other replica (`take_over_alerts`) and republished; a restarted
  replica republishes its own pending rows (`pending_alerts`). One holder per row at any time,
  so no alert is published by two live replicas, and none stays unpublished while one replica runs.
- What waits for the disk: `apply`'s transaction is durable (as the database is configured);
  writes whose loss costs at most a republication or a count (token bucket, rejection counts,
  `published` marks, pruning) may skip the wait, and `mark_state_published` may be deferred to the
  next `apply` (postgres.py; docs/backend.md "Cost per result, and what waits for the disk").
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Protocol

from backend_decryptor.alerts import AlertEvent

Decide = Callable[[dict | None], tuple[dict, list[AlertEvent]]]
# What apply gives back per result: (new state, stored alert events, when the camera's state was
# last published), None for a replay, or the exception its decide() raised.
Applied = tuple[dict, list["StoredAlert"], float | None]
# The alert columns in the order _stored reads them (explicit: migrations append columns).
ALERT_COLUMNS = "row, id, camera, zone, type, event, level, time, raised_at, meta, published"


@dataclass(frozen=True)
class Decision:
    """One result to apply: where it came from and `decide(old state) -> (new state, events)`,
    which must be pure (a retried transaction runs it again)."""
    gateway: str
    camera: str
    sequence: int
    capture_time: float
    zone: str | None
    decide: Decide


@dataclass(frozen=True)
class StoredAlert:
    row: int
    event: AlertEvent
    published: bool


class Storage(Protocol):
    replica: str

    def schema_version(self) -> int: ...
    def close(self) -> None: ...
    # checks (network thread)
    def is_seen(self, gateway: str, camera: str, sequence: int) -> bool: ...
    def prune_seen(self, older_than: float) -> int: ...
    def bind_camera(self, gateway: str, camera: str, limit: int) -> str | None: ...
    def camera_owners(self) -> dict[str, str]: ...
    def unbind_camera(self, camera: str) -> bool: ...
    def count_rejection(self, reason: str) -> None: ...
    def rate_limiter(self, rate: float, burst: int, max_clock_skew: float): ...
    # the one transaction per batch of results (decision thread)
    def apply_batch(self, decisions: list[Decision]) -> list[Applied | None | Exception]: ...
    def apply(self, gateway: str, camera: str, sequence: int, capture_time: float, zone: str | None,
              decide: Decide) -> Applied | None: ...
    # outbox
    def mark_published(self, rows: list[int]) -> None: ...
    def mark_state_published(self, camera: str, when: float) -> None: ...
    def pending_alerts(self) -> list[StoredAlert]: ...
    def take_over_alerts(self) -> list[StoredAlert]: ...
    def prune_history(self, older_than: float, batch: int = 1000, budget: float = 0.1) -> int: ...
    # keys the replicas must hold (storage/active_keys.py)
    def record_active_keys(self, keys: list[tuple[str, str, int]]) -> None: ...
    def active_keys(self) -> dict[str, tuple[str, int]]: ...
    # queries (CLI, tests; camera_state also for the state published with a drop)
    def camera_state(self, camera: str) -> tuple[str | None, dict] | None: ...   # (zone, rule state)
    def alerts(self, since: float | None = None, camera: str | None = None) -> list[StoredAlert]: ...
    def counters(self) -> dict[str, dict]: ...
    def rejections(self) -> dict[str, int]: ...


def apply_one(db, gateway: str, camera: str, sequence: int, capture_time: float, zone: str | None,
              decide: Decide) -> Applied | None:
    """`apply`: a batch of one; the exception decide() raised is raised (nothing was stored)."""
    [out] = db.apply_batch([Decision(gateway, camera, sequence, capture_time, zone, decide)])
    if isinstance(out, Exception):
        raise out
    return out


def event_counts(events: list[AlertEvent]) -> dict[str, int]:
    return {k: sum(ev.event == k for ev in events) for k in ("raised", "updated", "cleared")}


def stored_alert(r, loads) -> StoredAlert:
    row, id_, camera, zone, type_, event, level, t, raised_at, meta, published = r
    ev = AlertEvent(id_, camera, zone, type_, event, level, t, raised_at, loads(meta))
    return StoredAlert(row, ev, bool(published))


def prune_in_batches(delete_batch: Callable[[], int], batch: int, budget: float) -> int:
    """Run `delete_batch()` (one short transaction deleting up to `batch` rows) until it deletes
    fewer than `batch` or `budget` seconds are spent: old history goes without holding the
    database (or the decision thread) for long."""
    deadline, total = time.monotonic() + budget, 0
    while True:
        n = delete_batch()
        total += n
        if n < batch or time.monotonic() >= deadline:
            return total


class LeaseClock:
    """When to renew this replica's outbox leases and look for expired ones: every lease/3 s, so
    a live replica's rows never expire and a dead one's are taken over within ~1.3 leases."""

    def __init__(self, lease: float, clock=time.monotonic):
        self.lease = lease
        self.clock = clock
        self._next = clock() + lease / 3

    def due(self) -> bool:
        now = self.clock()
        if now < self._next:
            return False
        self._next = now + self.lease / 3
        return True
