#!/usr/bin/env bash
# Stop the local Ray head started by cluster/start-local.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/venv.sh"
ray stop --force >/dev/null 2>&1 || true
echo "[cluster] Ray stopped"
