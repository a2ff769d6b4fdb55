#!/usr/bin/env bash
# Stop the local Ray head that cluster/start-local.sh started (the one on CAEADMM_RAY_PORT,
# default 6379), and only that one: the processes of the session it recorded, in the order
# `ray stop` uses (raylet, then the rest, the GCS last), SIGKILL for any still alive after
# 10 s. Any other Ray on the machine is left alone. Removes the head's folder (its logs).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/cluster/local-head.sh"

# Send `signal` to the processes of the head (taken once, in HEAD_PROCESSES, before any
# ends and leaves its children to init) that `select`, an awk condition on $2, the command
# name, picks; then wait up to 10 s for them to end.
signal_and_wait() {
    local signal="$1" select="$2" pids
    pids="$(awk "$select {print \$1}" <<<"$HEAD_PROCESSES")"
    [ -n "$pids" ] || return 0
    kill "-$signal" $pids 2>/dev/null || true
    for _ in $(seq 40); do
        ps -o stat= -p "${pids//$'\n'/,}" | grep -qv '^Z' || return 0
        sleep 0.25
    done
}

if [ ! -f "$HEAD_DIR/head.sid" ]; then
    echo "[cluster] no Ray head of cluster/start-local.sh on 127.0.0.1:$GCS_PORT; nothing stopped"
    exit 0
fi
SID="$(head_session)"
if [ -n "$SID" ]; then
    HEAD_PROCESSES="$(session_processes "$SID")"
    signal_and_wait TERM '$2 == "raylet"'
    signal_and_wait TERM '$2 != "gcs_server"'
    signal_and_wait TERM '1'
    signal_and_wait KILL '1'
    echo "[cluster] stopped the Ray head on 127.0.0.1:$GCS_PORT that cluster/start-local.sh started"
else
    echo "[cluster] the Ray head recorded in $HEAD_DIR had already stopped"
fi
rm -rf "$HEAD_DIR"
