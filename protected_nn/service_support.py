"""Small pieces both services and both command lines share: systemd's notify protocol and the
command-line error contract. (No Pyfhel here: the gateway imports this too.)"""
from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

from protected_nn.errors import ProtectedNNError

log = logging.getLogger(__name__)


_reported_failures: set[tuple] = set()

# One log line format for both services: journald adds its own time, but `run` in the foreground,
# log files and `journalctl -o cat` need one, and two services' lines must read alike.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str | int) -> None:
    logging.basicConfig(level=level, stream=sys.stderr, format=LOG_FORMAT)


def sd_notify(message: str) -> bool:
    """sd_notify(3) without a dependency: one datagram to $NOTIFY_SOCKET; False when not under
    systemd or when the socket does not take it (never blocks the caller)."""
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


def os_error_text(e: OSError) -> str:
    """An OSError no command caught and named (a defect to fix there): at least the path and the
    reason, not Python's '[Errno 28] ...'."""
    if not e.strerror:
        return str(e)
    paths = [str(p) for p in (e.filename, e.filename2) if p is not None]
    return f"{' -> '.join(paths)}: {e.strerror}" if paths else e.strerror


def run_cli(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Exit codes of both command lines: 0 ok, 2 bad usage or bad input (one `error: ...` line
    on stderr, no traceback), 130 on Ctrl-C. A reader that goes away (`| head`) ends the command
    quietly with the usual 141, not with an error."""
    try:
        args = parser.parse_args(argv)
        func = getattr(args, "func", None)
        if func is None:
            parser.error("a command is required (see --help)")  # exits 2 with the usage line
        try:
            code = int(func(args) or 0)
            sys.stdout.flush()           # a closed pipe shows here, not at interpreter exit
            return code
        except BrokenPipeError:
            raise
        except (ProtectedNNError, OSError, ValueError) as e:
            text = os_error_text(e) if isinstance(e, OSError) else str(e)
            for line in text.splitlines() or [""]:   # several problems: each its own error: line
                print(f"error: {line}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return 130
    except BrokenPipeError:
        # Python's own advice: point stdout at devnull so the exit flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
