"""A bounded on-disk FIFO of (topic, payload) messages waiting for the broker.

One file per message, named by a zero-padded counter, so the folder listing *is* the order and a
restart finds everything that was not acknowledged. Files are written to a temporary name and
renamed, so a crash never leaves a half-written message that would later be sent as garbage.
When the total size passes the bound, the oldest messages are evicted and counted.
"""
from __future__ import annotations

import logging
import os
import struct
import threading
from pathlib import Path

log = logging.getLogger(__name__)

_SUFFIX = ".msg"
_HEADER = struct.Struct(">H")   # topic length


class Spool:
    def __init__(self, directory: Path, max_bytes: int):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.evicted = 0
        self._lock = threading.Lock()
        for leftover in self.directory.glob("*.tmp"):
            leftover.unlink(missing_ok=True)
        self._entries: dict[int, int] = {}   # id -> size, insertion (= id) order
        for p in sorted(self.directory.glob(f"*{_SUFFIX}")):
            try:
                self._entries[int(p.stem)] = p.stat().st_size
            except (ValueError, OSError):
                log.warning("spool: ignoring unexpected file %s", p)
        self._next_id = max(self._entries, default=0) + 1
        self._bytes = sum(self._entries.values())

    def _path(self, entry_id: int) -> Path:
        return self.directory / f"{entry_id:016d}{_SUFFIX}"

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def append(self, topic: str, payload: bytes) -> int:
        """Store one message at the end; returns its id. Evicts the oldest beyond the bound."""
        raw_topic = topic.encode("utf-8")
        data = _HEADER.pack(len(raw_topic)) + raw_topic + payload
        with self._lock:
            entry_id = self._next_id
            self._next_id += 1
            path = self._path(entry_id)
            tmp = path.with_suffix(".tmp")
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
            self._entries[entry_id] = len(data)
            self._bytes += len(data)
            while self._bytes > self.max_bytes and len(self._entries) > 1:
                oldest = next(iter(self._entries))
                self._remove_locked(oldest)
                self.evicted += 1
                log.warning("spool full (%d bytes): evicted message %d", self.max_bytes, oldest)
            return entry_id

    def ids(self) -> list[int]:
        with self._lock:
            return list(self._entries)

    def read(self, entry_id: int) -> tuple[str, bytes] | None:
        """The message, or None if it was evicted or is unreadable (then it is dropped)."""
        try:
            data = self._path(entry_id).read_bytes()
            (n,) = _HEADER.unpack_from(data)
            return data[2:2 + n].decode("utf-8"), data[2 + n:]
        except (OSError, struct.error, UnicodeDecodeError):
            self.remove(entry_id)
            return None

    def remove(self, entry_id: int) -> None:
        with self._lock:
            self._remove_locked(entry_id)

    def _remove_locked(self, entry_id: int) -> None:
        size = self._entries.pop(entry_id, None)
        if size is not None:
            self._bytes -= size
            self._path(entry_id).unlink(missing_ok=True)
