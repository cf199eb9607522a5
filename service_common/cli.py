"""The command-line contract of both tools (edge-agent, backend-decryptor).

- Exit codes: 0 ok, 2 bad usage or bad input, 130 on Ctrl-C, 141 when the reader of stdout goes
  away (`| head`), which is not an error.
- Bad input is reported as `error: ...` lines on stderr, one line per problem (a ConfigError
  carries several), never a traceback; a value that works but is probably wrong is a
  `warning: ...` line.
- One log line format for both services.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from protected_nn.errors import ProtectedNNError

# journald adds its own time, but `run` in the foreground, log files and `journalctl -o cat` need
# one, and two services' lines must read alike.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
EXIT_OK, EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 0, 2, 130, 141


def configure_logging(level: str | int) -> None:
    logging.basicConfig(level=level, stream=sys.stderr, format=LOG_FORMAT)


def os_error_text(e: OSError) -> str:
    """An OSError no command caught and named (a defect to fix there): at least the path and the
    reason, not Python's '[Errno 28] ...'."""
    if not e.strerror:
        return str(e)
    paths = [str(p) for p in (e.filename, e.filename2) if p is not None]
    return f"{' -> '.join(paths)}: {e.strerror}" if paths else e.strerror


def error_lines(exc: BaseException | str) -> list[str]:
    """`error: ...` for every line of a message (a problem list stays one problem per line)."""
    text = (os_error_text(exc) if isinstance(exc, OSError) else str(exc)).strip() or type(exc).__name__
    return [f"error: {line}" for line in text.splitlines() if line.strip()]


def report_error(exc: BaseException | str) -> None:
    for line in error_lines(exc):
        print(line, file=sys.stderr)


def warn(message: str) -> None:
    """A `warning: ...` line on stderr (before logging is set up, and for check-config)."""
    print(f"warning: {message}", file=sys.stderr)


def run_cli(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse `argv`, run the chosen sub-command (`func` default) and turn what it raises into the
    contract above."""
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
            report_error(e)
            return EXIT_BAD_INPUT
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Python's own advice: point stdout at devnull so the exit flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
