"""The verified bundle's members, held once per gateway in a sealed memory file for its workers.

The daemon verifies a bundle from its bytes (edge_agent/bundle_watch.py) and must be able to
start workers of that model later (a crash, a restart after a reload), even when the file on
disk has meanwhile been replaced by something it refuses. Handing every worker a pickled copy
of the bytes costs one bundle per worker for the worker's whole life (a spawned process keeps
its arguments), on top of what SEAL expands the keys and weights to. Instead the daemon writes
the verified members once into a memfd and seals it (no write, no resize: the kernel refuses
them, to the daemon too), then passes the file descriptor to each worker. A worker reads one
member at a time and checks it against the digest the daemon took from the verified manifest
before using it, and reads the weights one ciphertext at a time (`read_span`, only within a
member whose whole bytes were checked). So a worker holds no copy of the bundle and runs only
bytes that verified.

Linux only (memfd_create, file seals); where no memfd can be made, `seal` falls back to bytes.
"""
from __future__ import annotations

import fcntl
import hashlib
import logging
import os

from protected_nn.artifacts import MEMBERS, ModelArtifacts, key_fingerprint_of, parse_model_card
from protected_nn.errors import BundleError

_SEALS = getattr(fcntl, "F_SEAL_SEAL", 0) | getattr(fcntl, "F_SEAL_SHRINK", 0) \
    | getattr(fcntl, "F_SEAL_GROW", 0) | getattr(fcntl, "F_SEAL_WRITE", 0)
AVAILABLE = hasattr(os, "memfd_create") and hasattr(fcntl, "F_ADD_SEALS")
log = logging.getLogger(__name__)


def seal(members: dict, manifest: dict | None = None):
    """The verified `members` ({name: bytes or a view of them}) as a SealedArtifacts, checked
    later against the sha256 of each that `manifest` (the verified bundle's) lists, else against
    their own. Where no memfd can be made (not Linux, RLIMIT_FSIZE below the bundle, no memory),
    a ModelArtifacts of them: each worker then gets a copy, as before there were memfds."""
    if AVAILABLE:
        digests = {name: entry["sha256"] for name, entry in manifest["members"].items()} if manifest else None
        try:
            return SealedArtifacts.write(members, digests)
        except OSError as exc:
            log.warning("cannot keep the bundle in a sealed memfd (%s): each worker gets a copy", exc)
    return ModelArtifacts.from_members({name: bytes(data) for name, data in members.items()})


class SealedArtifacts:
    """Members by name from a sealed memfd: `index` = {name: (offset, size, sha256 hex)}."""

    def __init__(self, fd: int, index: dict[str, tuple[int, int, str]]):
        if set(index) != set(MEMBERS):
            raise BundleError(f"sealed bundle lists members {sorted(index)}, expected {list(MEMBERS)}")
        if fcntl.fcntl(fd, fcntl.F_GET_SEALS) & _SEALS != _SEALS:
            raise BundleError("the bundle copy handed to the worker is not sealed against writes")
        end = os.fstat(fd).st_size
        for name, (offset, size, _) in index.items():
            if offset < 0 or size < 0 or offset + size > end:
                raise BundleError(f"sealed bundle member {name!r} lies outside the file")
        self.fd, self.index = fd, dict(index)
        self._checked: set[str] = set()
        self._fingerprint: str | None = None

    @classmethod
    def write(cls, members: dict, digests: dict[str, str] | None = None) -> "SealedArtifacts":
        fd = os.memfd_create("fhe-edge-bundle", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            index, offset = {}, 0
            for name in MEMBERS:
                view, written = memoryview(members[name]).cast("B"), 0
                while written < len(view):
                    written += os.pwrite(fd, view[written:], offset + written)
                digest = digests[name] if digests else hashlib.sha256(view).hexdigest()
                index[name] = (offset, len(view), digest)
                offset += len(view)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            return cls(fd, index)
        except BaseException:
            os.close(fd)
            raise

    # -- the member source EdgeModel reads (as ModelArtifacts.member) ---------------------------
    def member(self, name: str) -> bytes:
        """A member's bytes, refused unless their sha256 is the verified manifest's."""
        if name not in self.index:
            raise KeyError(f"no bundle member {name!r}")
        offset, size, digest = self.index[name]
        data = os.pread(self.fd, size, offset)
        if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
            raise BundleError(f"bundle member {name!r} differs from the verified bundle")
        self._checked.add(name)
        return data

    def read_span(self, name: str, offset: int, size: int) -> bytes:
        """Part of a member that `member` checked whole (the file is sealed: still the same)."""
        if name not in self._checked:
            raise BundleError(f"bundle member {name!r} read in part before it was checked whole")
        start, total, _ = self.index[name]
        if offset < 0 or size < 0 or offset + size > total:
            raise BundleError(f"bytes {offset}..{offset + size} lie outside member {name!r}")
        return os.pread(self.fd, size, start + offset)

    # -- what the daemon and check-config read of a model (as of a ModelArtifacts) --------------
    @property
    def key_fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = key_fingerprint_of(self.member("public_key"))
        return self._fingerprint

    def card(self):
        return parse_model_card(self.member("model_card"))

    def as_members(self) -> dict[str, bytes]:
        return {name: self.member(name) for name in MEMBERS}

    @property
    def size(self) -> int:
        return sum(size for _, size, _ in self.index.values())

    # -- lifetime and hand-over to a worker ------------------------------------------------------
    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self):
        try:
            self.close()
        except (AttributeError, OSError):
            pass

    def __reduce__(self):
        # multiprocessing's DupFd: while a process is being spawned, the descriptor is passed to
        # it among the inherited ones (as the pool's pipes are); otherwise via its fd sharer.
        from multiprocessing.reduction import DupFd
        return _rebuild, (DupFd(self.fd), self.index)


def _rebuild(dup, index) -> SealedArtifacts:
    fd = dup.detach()
    try:
        return SealedArtifacts(fd, index)
    except BaseException:
        os.close(fd)
        raise
