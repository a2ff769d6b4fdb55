#!/usr/bin/env bash
# The README's test command: set up .venv (idempotent), lint, run the whole test suite.
# Extra arguments go to pytest, e.g. `scripts/test.sh -m "not slow"` or `scripts/test.sh tests/test_coding.py`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/venv.sh"
cd "$ROOT"
ruff check .
exec python -m pytest "$@"
