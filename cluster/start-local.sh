#!/usr/bin/env bash
# Start a local single-node Ray head on 127.0.0.1 for `ray job submit` (the embedded default).
#
# On a small machine a training worker reserves CPUs that Ray Data's read tasks then lack,
# so the head declares more logical CPUs than cores (2x, at least 4); training workers ask
# for a fractional CPU share (configs/*.yaml: cpus_per_worker). Override with RAY_NUM_CPUS.
# The dashboard (needed by `ray job submit`) listens on 127.0.0.1:8265.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/venv.sh"
# Ray 2.60 turns token authentication on for a head whenever ~/.ray/auth_token exists;
# make sure one does, and have every client in this shell send it (cluster/README.md).
ray get-auth-token --generate >/dev/null
export RAY_AUTH_MODE=token
CORES="$(nproc)"
NUM_CPUS="${RAY_NUM_CPUS:-$(( CORES * 2 > 4 ? CORES * 2 : 4 ))}"
if ray status --address 127.0.0.1:6379 >/dev/null 2>&1; then
    echo "[cluster] a Ray head is already running at 127.0.0.1:6379"
else
    ray start --head --node-ip-address 127.0.0.1 --port 6379 \
        --dashboard-host 127.0.0.1 --dashboard-port 8265 \
        --num-cpus "$NUM_CPUS" --disable-usage-stats >/dev/null
    echo "[cluster] Ray head started on 127.0.0.1:6379 with $NUM_CPUS logical CPUs"
fi
echo "[cluster] submit jobs with: RAY_AUTH_MODE=token RAY_ADDRESS=http://127.0.0.1:8265 ray job submit --working-dir . -- python jobs/train.py ..."
