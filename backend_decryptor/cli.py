"""`backend-decryptor`: the owner's command line (one-shot commands here, the service's via service_cli).

Exit codes: 0 ok, 2 bad usage or bad input (one `error: ...` line on stderr, no traceback)."""
from __future__ import annotations

import argparse
import sys

from backend_decryptor import service_cli
from backend_decryptor.adapt import command as adapt_command
from backend_decryptor.commands import decrypt, export, models, protect
from service_common.cli import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backend-decryptor",
        description="Owner backend: protect (encrypt) ONNX models, export signed bundles, decrypt results.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in (protect, export, decrypt, models, adapt_command):
        command.add_parser(sub)
    service_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
