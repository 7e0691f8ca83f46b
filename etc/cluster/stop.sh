#!/usr/bin/env bash
# Stops the cluster etc/cluster/start.sh started: exactly the processes whose
# PIDs it recorded in <run dir>/<name>.pid, brokers first, then the placement
# nodes, etcd last.  Each group gets SIGTERM, then SIGKILL after a timeout.
# A pidfile whose process is gone (or is no longer the process start.sh
# started) is ignored and removed, so running this twice is harmless.
#
# Environment:
#   RMQ_CLUSTER_DIR     run directory (default etc/cluster/run)
#   RMQ_STOP_TIMEOUT    seconds a group may take to exit after SIGTERM (default 30)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RUN="${RMQ_CLUSTER_DIR:-$HERE/run}"
TIMEOUT="${RMQ_STOP_TIMEOUT:-30}"

if [[ ! -d "$RUN" ]]; then
    echo "stop.sh: no run directory $RUN: nothing to stop"
    exit 0
fi
RUN="$(cd "$RUN" && pwd)"

# The command line a recorded process must have to be ours: a PID may have
# been reused since start.sh wrote it.
signature() {
    case "$1" in
    etcd-*) printf -- '--name %s ' "$1" ;;
    *) printf -- '--config %s' "$HERE/$1.toml" ;;
    esac
}

# Prints the PID in <name>.pid if that process still runs and is ours;
# removes the pidfile otherwise.
recorded() {
    local name="$1" file="$RUN/$1.pid" pid args state
    [[ -f "$file" ]] || return 1
    pid="$(cat "$file" 2>/dev/null || true)"
    if [[ "$pid" =~ ^[0-9]+$ ]]; then
        args="$(ps -ww -o args= -p "$pid" 2>/dev/null || true)"
        state="$(ps -o stat= -p "$pid" 2>/dev/null || true)"
        if [[ -n "$args" && "$state" != Z* && "$args " == *"$(signature "$name")"* ]]; then
            echo "$pid"
            return 0
        fi
    fi
    echo "stop.sh: $name is not running (stale $file removed)" >&2
    rm -f "$file"
    return 1
}

gone() {
    local state
    state="$(ps -o stat= -p "$1" 2>/dev/null || true)"
    [[ -z "$state" || "$state" == Z* ]]
}

# Stops one group of nodes together: SIGTERM, wait, SIGKILL.
stopGroup() {
    local names=() pids=() name pid i deadline
    for name in "$@"; do
        if pid="$(recorded "$name")"; then
            names+=("$name")
            pids+=("$pid")
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    ((${#pids[@]})) || return 0
    echo "stopping ${names[*]}"
    deadline=$((SECONDS + TIMEOUT))
    for i in "${!pids[@]}"; do
        while ! gone "${pids[i]}" && ((SECONDS < deadline)); do
            sleep 0.2
        done
        if ! gone "${pids[i]}"; then
            echo "stop.sh: ${names[i]} (${pids[i]}) still running after ${TIMEOUT}s: SIGKILL"
            kill -KILL "${pids[i]}" 2>/dev/null || true
            for _ in $(seq 50); do
                gone "${pids[i]}" && break
                sleep 0.1
            done
        fi
        rm -f "$RUN/${names[i]}.pid"
    done
}

stopGroup broker-3 broker-2 broker-1
stopGroup placement-3 placement-2 placement-1
stopGroup etcd-3 etcd-2 etcd-1
echo "stopped (data and logs kept in $RUN; delete it for a fresh cluster)"
