#!/usr/bin/env bash
# The README's test command: set up .venv (idempotent), lint, run the whole test suite (CI
# runs exactly this). Extra arguments go to pytest, e.g. `scripts/test.sh tests/test_coding.py`.
#
#   scripts/test.sh --fast    the development tier: everything but the tests marked slow
#                             (pytest -m "not slow": Ray clusters, end-to-end training and
#                             the other runs of half a minute or more), under 3 minutes
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/venv.sh"
cd "$ROOT"
ruff check .
if [ "${1:-}" = "--fast" ]; then
    shift
    exec python -m pytest -m "not slow" "$@"
fi
exec python -m pytest "$@"
