# Shared by start-local.sh, stop-local.sh and scripts/main.sh (sourced, not run): the ports
# and the state folder of the local head, and how to find the processes that head started.
#
# A head is named by its GCS port. Its state folder, /tmp/caeadmm-ray-$UID-<port>, is also
# Ray's temp dir (logs, sockets; a short path, as Unix sockets allow 107 characters) and holds
#   head.sid     the id of the process session that every process of the head runs in
#   client.env   what a client shell needs: RAY_ADDRESS, RAY_AUTH_MODE, ... (`source` it)
#
# Ports, all on 127.0.0.1 (override with the environment):
#   CAEADMM_RAY_PORT            GCS (default 6379)
#   CAEADMM_RAY_DASHBOARD_PORT  dashboard and job server (default 8265)
#   CAEADMM_RAY_PORT_BASE       the rest (default 20000): dashboard agent HTTP and gRPC,
#                               runtime env agent, metrics export, node manager, object
#                               manager, Ray client, autoscaler and dashboard metrics at
#                               BASE..BASE+8; worker processes at BASE+100..BASE+999
GCS_PORT="${CAEADMM_RAY_PORT:-6379}"
DASHBOARD_PORT="${CAEADMM_RAY_DASHBOARD_PORT:-8265}"
PORT_BASE="${CAEADMM_RAY_PORT_BASE:-20000}"
AGENT_HTTP_PORT=$PORT_BASE
AGENT_GRPC_PORT=$((PORT_BASE + 1))
RUNTIME_ENV_AGENT_PORT=$((PORT_BASE + 2))
METRICS_EXPORT_PORT=$((PORT_BASE + 3))
NODE_MANAGER_PORT=$((PORT_BASE + 4))
OBJECT_MANAGER_PORT=$((PORT_BASE + 5))
RAY_CLIENT_PORT=$((PORT_BASE + 6))
AUTOSCALER_METRICS_PORT=$((PORT_BASE + 7))
DASHBOARD_METRICS_PORT=$((PORT_BASE + 8))
MIN_WORKER_PORT=$((PORT_BASE + 100))
MAX_WORKER_PORT=$((PORT_BASE + 999))
HEAD_PORTS=(
    "$GCS_PORT" "$DASHBOARD_PORT" "$AGENT_HTTP_PORT" "$AGENT_GRPC_PORT"
    "$RUNTIME_ENV_AGENT_PORT" "$METRICS_EXPORT_PORT" "$NODE_MANAGER_PORT"
    "$OBJECT_MANAGER_PORT" "$RAY_CLIENT_PORT" "$AUTOSCALER_METRICS_PORT"
    "$DASHBOARD_METRICS_PORT"
)
HEAD_DIR="/tmp/caeadmm-ray-${UID}-${GCS_PORT}"

# The id of the process session recorded in head.sid, if that session still has a process
# that runs with this head's folder on its command line; nothing otherwise, so that a session
# id the system reuses after the head died never matches.
head_session() {
    local sid pid
    sid="$(cat "$HEAD_DIR/head.sid" 2>/dev/null)" || return 0
    [[ "$sid" =~ ^[0-9]+$ ]] || return 0
    for pid in $(session_processes "$sid" | awk '{print $1}'); do
        if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$HEAD_DIR/"; then
            echo "$sid"
            return 0
        fi
    done
}

# The live (not zombie) processes of a session and their descendants (such as the drivers
# of submitted jobs, which run in sessions of their own), as "PID COMMAND" lines.
session_processes() {
    ps -eo pid=,ppid=,sid=,stat=,comm= | awk -v s="$1" '
        $4 !~ /^Z/ { pid[NR] = $1; ppid[NR] = $2; comm[NR] = $5; if ($3 == s) keep[$1] = 1 }
        END {
            do {
                added = 0
                for (i in pid) if (!(pid[i] in keep) && (ppid[i] in keep)) { keep[pid[i]] = 1; added = 1 }
            } while (added)
            for (i in pid) if (pid[i] in keep) print pid[i], comm[i]
        }'
}

head_running() {
    [ -n "$(head_session)" ]
}
