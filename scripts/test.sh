#!/usr/bin/env bash
# The README's test command: set up (idempotent), then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
# The bench extra (TenSEAL) too: tests check that the baseline computes the same function.
# TenSEAL publishes x86_64 wheels only; elsewhere its tests are skipped. The adapt extra (torch)
# runs tests/training/test_adapt.py (skipped where torch is missing).
case "$(uname -m)" in x86_64) default_extras=test,bench,adapt ;; *) default_extras=test ;; esac
FHE_EDGE_EXTRAS=${FHE_EDGE_EXTRAS:-$default_extras} ./scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
