#!/usr/bin/env bash
# Start a local single-node Ray head for `ray job submit`, bound to 127.0.0.1 only, on ports
# of its own (cluster/local-head.sh lists them and their environment variables), and record
# what it started so that cluster/stop-local.sh stops this head and nothing else.
#
# On a small machine a training worker reserves CPUs that Ray Data's read tasks then lack,
# so the head declares more logical CPUs than cores (2x, at least 4); training workers ask
# for a fractional CPU share (configs/*.yaml: cpus_per_worker). Override with RAY_NUM_CPUS.
# Run again while the head runs: it says so and changes nothing. If another Ray (one this
# script did not start) holds a port, it stops with a message and starts nothing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/venv.sh"
source "$ROOT/cluster/local-head.sh"

# Ray resolves 127.0.0.1 to the machine's network address (and then listens on every
# interface) unless it runs as a single-machine cluster; clients of this head need the same
# setting to reach it on 127.0.0.1. Ray 2.60 turns token authentication on for a head
# whenever ~/.ray/auth_token exists: make sure one does, and have every client send it.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_AUTH_MODE=token
# client.env: RAY_ADDRESS names the head's GCS (what ray.init, `ray status`, caeadmm eval and
# python jobs/*.py join) and RAY_API_SERVER_ADDRESS its job server (what `ray job submit`,
# `ray job logs` and the other `ray job` commands use): ray.init refuses an http:// address.
print_usage() {
    cat <<EOM
[cluster] in the shell you submit from (or: source $HEAD_DIR/client.env):
    export RAY_ADDRESS=127.0.0.1:$GCS_PORT RAY_API_SERVER_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT RAY_AUTH_MODE=token RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
    ray job submit --working-dir . -- python jobs/train.py ...
[cluster] there, python jobs/*.py and caeadmm eval join it too (elsewhere: --address 127.0.0.1:$GCS_PORT)
[cluster] stop it with: CAEADMM_RAY_PORT=$GCS_PORT cluster/stop-local.sh
EOM
}

if head_running; then
    echo "[cluster] the Ray head that this script started on 127.0.0.1:$GCS_PORT is running"
    print_usage
    exit 0
fi
TAKEN="$(python - "${HEAD_PORTS[@]}" <<'EOF'
import socket, sys
taken = []
for port in sys.argv[1:]:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", int(port)))
        except OSError:
            taken.append(port)
print(" ".join(taken))
EOF
)"
if [ -n "$TAKEN" ]; then
    echo "[cluster] error: port(s) $TAKEN on 127.0.0.1 in use, by a Ray head this script did" \
        "not start or another program; it is left alone. Stop it, or pick other ports with" \
        "CAEADMM_RAY_PORT, CAEADMM_RAY_DASHBOARD_PORT, CAEADMM_RAY_PORT_BASE" \
        "(cluster/local-head.sh)" >&2
    exit 1
fi

rm -rf "$HEAD_DIR"
mkdir -p "$HEAD_DIR"
ray get-auth-token --generate >/dev/null
CORES="$(nproc)"
NUM_CPUS="${RAY_NUM_CPUS:-$(( CORES * 2 > 4 ? CORES * 2 : 4 ))}"
# setsid: every process of the head, workers included, runs in one new session, which
# stop-local.sh finds by its id. RAY_ADDRESS in the head's environment: Ray code in its
# processes that looks for "the" cluster (Ray Train's placement-group cleaner) finds this
# one, not the one the last `ray start` on the machine recorded in /tmp/ray.
if ! RAY_ADDRESS="127.0.0.1:$GCS_PORT" \
    AUTOSCALER_METRIC_PORT="$AUTOSCALER_METRICS_PORT" DASHBOARD_METRIC_PORT="$DASHBOARD_METRICS_PORT" \
    setsid --wait ray start --head --node-ip-address 127.0.0.1 --port "$GCS_PORT" \
    --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT" \
    --dashboard-agent-listen-port "$AGENT_HTTP_PORT" --dashboard-agent-grpc-port "$AGENT_GRPC_PORT" \
    --runtime-env-agent-port "$RUNTIME_ENV_AGENT_PORT" --metrics-export-port "$METRICS_EXPORT_PORT" \
    --node-manager-port "$NODE_MANAGER_PORT" --object-manager-port "$OBJECT_MANAGER_PORT" \
    --ray-client-server-port "$RAY_CLIENT_PORT" \
    --min-worker-port "$MIN_WORKER_PORT" --max-worker-port "$MAX_WORKER_PORT" \
    --temp-dir "$HEAD_DIR" --num-cpus "$NUM_CPUS" --disable-usage-stats \
    >"$HEAD_DIR/start.log" 2>&1; then
    echo "[cluster] error: ray start failed; its output:" >&2
    cat "$HEAD_DIR/start.log" >&2
    exit 1
fi
GCS_PID="$(pgrep -f -- "gcs_server .*--session-dir=$HEAD_DIR/" | head -1)" \
    || { echo "[cluster] error: ray start succeeded but its GCS is not running" >&2; exit 1; }
ps -o sid= -p "$GCS_PID" | tr -d ' ' >"$HEAD_DIR/head.sid"
cat >"$HEAD_DIR/client.env" <<EOM
export RAY_ADDRESS=127.0.0.1:$GCS_PORT
export RAY_API_SERVER_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT
export RAY_AUTH_MODE=token
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
EOM
echo "[cluster] Ray head started on 127.0.0.1 only: GCS 127.0.0.1:$GCS_PORT, dashboard and" \
    "job server http://127.0.0.1:$DASHBOARD_PORT, $NUM_CPUS logical CPUs; logs in $HEAD_DIR"
print_usage
