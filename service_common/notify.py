"""systemd's notify protocol (READY=1, WATCHDOG=1, STATUS=..., STOPPING=1) without a dependency.
Outside systemd NOTIFY_SOCKET is unset and every notification is a no-op."""
from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)

_reported_failures: set[tuple] = set()


def sd_notify(message: str) -> bool:
    """sd_notify(3): one datagram to $NOTIFY_SOCKET; False when not under systemd or when the
    socket does not take it (never blocks the caller)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):          # abstract namespace socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.setblocking(False)         # a full or stuck receiver must never stall a shutdown
            s.connect(address)
            s.send(message.encode("utf-8"))
        return True
    except OSError as exc:
        # Once per kind of failure, not once a second: a stuck notify socket must not fill the log.
        key = (message.split("=")[0], type(exc).__name__, getattr(exc, "errno", None))
        if key not in _reported_failures:
            _reported_failures.add(key)
            log.warning("sd_notify(%s) failed: %s (further failures of this kind not logged)", key[0], exc)
        return False


def watchdog_interval() -> float | None:
    """Half the systemd watchdog period (WATCHDOG_USEC), or None when no watchdog is armed."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(0.5, int(usec) / 2e6)
    except ValueError:
        return None
