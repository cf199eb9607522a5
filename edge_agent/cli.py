"""`edge-agent`: the gateway's command line (`infer` here, the daemon's commands via daemon_cli).

This process never holds a secret key: it imports edge-side code only (no backend_decryptor).
Exit codes: 0 ok, 2 bad usage or bad input (one `error: ...` line on stderr, no traceback)."""
from __future__ import annotations

import argparse
import sys

from edge_agent import daemon_cli, infer_cmd
from protected_nn.errors import ProtectedNNError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="Gateway: run encrypted CNN inference on frames with a signed model bundle.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    infer_cmd.add_parser(sub)
    daemon_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.error("a command is required (see --help)")  # exits 2 with the usage line
    try:
        return int(func(args) or 0)
    except (ProtectedNNError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
