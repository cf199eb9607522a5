"""Per-camera sequence numbers that never repeat, even across restarts and crashes.

The backend rejects a repeated sequence number as a replay, so a restarted gateway must continue
above everything it ever sent. Writing the counter after every message would wear out a
gateway's flash; instead we persist a *lease*: before handing out number n we make sure the file
already says "up to n + LEASE may be in use". After a crash we restart at the leased mark, which
skips at most LEASE numbers (gaps are fine, repeats are not).
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

LEASE = 1000
FILE_NAME = "sequences.json"


class SequenceStore:
    def __init__(self, state_dir: Path):
        self.path = Path(state_dir) / FILE_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._floor = False
        self._lock = threading.Lock()
        self._leased: dict[str, int] = self._load()   # camera -> numbers below this may be used
        self._next: dict[str, int] = dict(self._leased)  # restart above every lease

    def _load(self) -> dict[str, int]:
        try:
            data = json.loads(self.path.read_text())
            return {str(k): int(v) for k, v in data.items() if int(v) >= 0}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, AttributeError) as exc:
            # Unreadable state: refusing to start would stop the cameras; starting at 0 would make
            # the backend reject everything. Start far above any plausible earlier value instead.
            log.error("cannot read %s (%s): sequences restart at a time-based floor", self.path, exc)
            self._floor = True
            return {}

    def next(self, camera_id: str) -> int:
        with self._lock:
            if camera_id not in self._next:
                self._next[camera_id] = self._initial()
            n = self._next[camera_id]
            self._next[camera_id] = n + 1
            if n >= self._leased.get(camera_id, 0):
                self._leased[camera_id] = n + LEASE
                self._save()
            return n

    def _initial(self) -> int:
        # Without any state for this camera: 0, unless the state file was corrupt, in which case
        # microseconds since the epoch are above anything a previous run could have reached.
        if self._floor:
            return int(time.time() * 1e6)
        return 0

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(self._leased, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def close(self) -> None:
        """Record where we really stopped, so a clean restart leaves no gap."""
        with self._lock:
            self._leased = dict(self._next)
            self._save()
