"""`edge-agent`: the gateway's command line (`infer`, `keygen`, the daemon's commands via daemon_cli).

This process never holds a secret key: it imports edge-side code only (no backend_decryptor).
Exit codes: 0 ok, 2 bad usage or bad input (one `error: ...` line on stderr, no traceback)."""
from __future__ import annotations

import argparse
import sys

from edge_agent import daemon_cli, infer_cmd, keygen_cmd
from service_common.cli import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="Gateway: run encrypted CNN inference on frames with a signed model bundle.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    infer_cmd.add_parser(sub)
    daemon_cli.register(sub)
    keygen_cmd.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
