#!/usr/bin/env bash
# Create or reuse .venv in the repo root and install the project into it (idempotent).
# Sourced by the README's two commands. The CPU wheel of torch is installed first, pinned,
# so that pip never resolves the unpinned `torch` dependency to a multi-GB CUDA build.
# An activated virtualenv with Ray in it ($VIRTUAL_ENV) is used as it is, nothing installed.
set -euo pipefail
if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/ray" ]; then
    export PATH="$VIRTUAL_ENV/bin:$PATH"
    return 0
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV"
    "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.caeadmm-installed"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
    echo "[setup] installing caeadmm and its dependencies into .venv (first run: about a minute)"
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    "$VENV/bin/python" -m pip install -q "torch==2.13.0"
    "$VENV/bin/python" -m pip install -q -e "$ROOT[dev]"
    touch "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
