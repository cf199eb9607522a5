#!/usr/bin/env bash
# The README's first command: set up this machine (idempotent), then run the whole system on
# real mall footage and a rendered incident for ~1.5 minutes and draw demo-out/demo.png. Options go to the demo
# (./scripts/demo.sh --help). Ctrl-C stops it and everything it started. See docs/demo.md.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/python -m demo.run_demo "$@"
