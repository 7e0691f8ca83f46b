#!/usr/bin/env bash
# Starts a RobustMQ cluster on this host, on loopback only: a 3-member etcd,
# 3 placement nodes and 3 brokers (etc/cluster/README.md).
#
# Every process runs in the background with the run directory as its working
# directory (etc/cluster/run/, or $RMQ_CLUSTER_DIR), logs to <name>.log there
# and has its PID recorded in <name>.pid there; etc/cluster/stop.sh stops
# exactly those processes.  If anything fails to come up, what was started is
# stopped again.
#
# Environment:
#   ROBUSTMQ_PLACEMENT__CLUSTER_SECRET  the cluster secret; when unset, the one in
#                                       <run dir>/cluster.secret (made on first use)
#   RMQ_CLUSTER_DIR                     run directory (default etc/cluster/run)
#   RMQ_VENV                            virtualenv (default <repo>/.venv)
#   RMQ_START_TIMEOUT                   seconds to wait for each group (default 60)
#   RMQ_PORT_OFFSET                     added to every port below (default 0), so a
#                                       second cluster (or the tests) can run beside
#                                       `make run` or another cluster; the node configs
#                                       keep the standard ports and start.sh overrides
#                                       them with ROBUSTMQ_* variables
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
RUN="${RMQ_CLUSTER_DIR:-$HERE/run}"
VENV="${RMQ_VENV:-$ROOT/.venv}"
TIMEOUT="${RMQ_START_TIMEOUT:-60}"
OFFSET="${RMQ_PORT_OFFSET:-0}"
if [[ ! "$OFFSET" =~ ^[0-9]+$ ]] || ((OFFSET > 50000)); then
    printf 'start.sh: RMQ_PORT_OFFSET must be a number from 0 to 50000, not %s\n' "$OFFSET" >&2
    exit 1
fi
START_TIME="$(date +%s)"

# Every port, shifted by RMQ_PORT_OFFSET.
shifted() {
    local p out=()
    for p in "$@"; do out+=($((p + OFFSET))); done
    echo "${out[*]}"
}
PLACEMENT=(placement-1 placement-2 placement-3)
BROKERS=(broker-1 broker-2 broker-3)
ETCD=(etcd-1 etcd-2 etcd-3)
read -r -a ETCD_CLIENT <<<"$(shifted 2379 2389 2399)"
read -r -a ETCD_PEER <<<"$(shifted 2380 2390 2400)"
read -r -a PB_PORTS <<<"$(shifted 1228 1238 1248)"
read -r -a LINK_PORTS <<<"$(shifted 1229 1239 1249)"
read -r -a MQTT_PORTS <<<"$(shifted 1883 1884 1885)"
read -r -a WS_PORTS <<<"$(shifted 8083 8084 8085)"
read -r -a HTTP_PORTS <<<"$(shifted 8080 8081 8082)"
read -r -a OTHER_PORTS <<<"$(shifted 9092 5672)" # Kafka and AMQP, on broker-1
KAFKA_PORT="${OTHER_PORTS[0]}"
AMQP_PORT="${OTHER_PORTS[1]}"

say() { printf '%s\n' "$*"; }
die() {
    printf 'start.sh: %s\n' "$*" >&2
    exit 1
}

TWISTD="$VENV/bin/twistd"
PYTHON="$VENV/bin/python"
if [[ ! -x "$TWISTD" || ! -x "$PYTHON" ]]; then
    die "no virtualenv at $VENV (no bin/twistd): run 'make venv' in $ROOT first"
fi
command -v etcd >/dev/null 2>&1 ||
    die "etcd is not installed: 'sudo apt-get install etcd-server' (or 'make system-deps')"
command -v setsid >/dev/null 2>&1 || die "setsid (util-linux) is not installed"

mkdir -p "$RUN"
chmod 700 "$RUN"
RUN="$(cd "$RUN" && pwd)"
cd "$RUN"

# What is already running from an earlier start.sh: refuse rather than start twice.
running=()
for name in "${ETCD[@]}" "${PLACEMENT[@]}" "${BROKERS[@]}"; do
    if [[ -f "$name.pid" ]]; then
        pid="$(cat "$name.pid" 2>/dev/null || true)"
        if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
            running+=("$name ($pid)")
        fi
    fi
done
if ((${#running[@]})); then
    die "already running from $RUN: ${running[*]}; stop it first with $HERE/stop.sh"
fi

portOpen() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

busy=()
for port in "${ETCD_CLIENT[@]}" "${ETCD_PEER[@]}" "${PB_PORTS[@]}" "${LINK_PORTS[@]}" \
    "${MQTT_PORTS[@]}" "${WS_PORTS[@]}" "${HTTP_PORTS[@]}" "${OTHER_PORTS[@]}"; do
    portOpen "$port" && busy+=("$port")
done
if ((${#busy[@]})); then
    die "port(s) ${busy[*]} on 127.0.0.1 already in use (another broker, mosquitto, etcd?); free them first, or shift every port with RMQ_PORT_OFFSET=N"
fi

# The secret every node logs in to the placement center with.  A leading
# letter keeps an environment override from being read as a TOML number.
secretFrom="the environment"
if [[ -z "${ROBUSTMQ_PLACEMENT__CLUSTER_SECRET:-}" ]]; then
    secretFrom="$RUN/cluster.secret"
    if [[ ! -s cluster.secret ]]; then
        (umask 077 && "$PYTHON" -c 'import secrets; print("rmq-" + secrets.token_hex(24))' \
            >cluster.secret)
        say "generated a cluster secret in $RUN/cluster.secret"
    fi
    ROBUSTMQ_PLACEMENT__CLUSTER_SECRET="$(cat cluster.secret)"
fi
export ROBUSTMQ_PLACEMENT__CLUSTER_SECRET

# From here on, a failure (or Ctrl-C) stops whatever this run started.
started=0
finished=0
cleanup() {
    if ((started && !finished)); then
        say "start.sh: stopping what was started" >&2
        RMQ_CLUSTER_DIR="$RUN" bash "$HERE/stop.sh" >&2 || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Runs a command in the background in its own session (so a terminal hang-up
# or Ctrl-C does not reach it) and records its PID in <name>.pid.
launch() {
    local name="$1"
    shift
    printf '\n=== %s: start.sh %s\n' "$(date '+%F %T')" "$name" >>"$name.log"
    setsid "$@" >>"$name.log" 2>&1 </dev/null &
    echo "$!" >"$name.pid"
    started=1
}

failed() {
    local name="$1" why="$2"
    printf 'start.sh: %s %s; the end of %s:\n' "$name" "$why" "$RUN/$name.log" >&2
    tail -n 25 "$RUN/$name.log" >&2 || true
    exit 1
}

alive() { kill -0 "$(cat "$1.pid")" 2>/dev/null; }

# Waits until every (name, port) pair accepts TCP connections.
waitPorts() {
    local deadline=$((SECONDS + TIMEOUT)) name port pending
    while :; do
        pending=""
        for pair in "$@"; do
            name="${pair%%:*}"
            port="${pair##*:}"
            alive "$name" || failed "$name" "exited"
            portOpen "$port" || pending="${pending:-$pair}"
        done
        [[ -n "$pending" ]] || return 0
        ((SECONDS < deadline)) ||
            failed "${pending%%:*}" "did not open port ${pending##*:} within ${TIMEOUT}s"
        sleep 0.2
    done
}

# Answers whether an HTTP GET of $1 answers 200 with $2 in the body.
httpHas() {
    "$PYTHON" - "$1" "$2" <<'EOF'
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
        sys.exit(0 if sys.argv[2].encode() in r.read() else 1)
except OSError:
    sys.exit(1)
EOF
}

# 1. etcd: three members on loopback; healthy once they have elected a leader.
initial=""
for i in 0 1 2; do
    initial+="${initial:+,}${ETCD[i]}=http://127.0.0.1:${ETCD_PEER[i]}"
done
for i in 0 1 2; do
    client="http://127.0.0.1:${ETCD_CLIENT[i]}"
    peer="http://127.0.0.1:${ETCD_PEER[i]}"
    launch "${ETCD[i]}" etcd --name "${ETCD[i]}" --data-dir "$RUN/${ETCD[i]}" \
        --listen-client-urls "$client" --advertise-client-urls "$client" \
        --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
        --initial-cluster "$initial" --initial-cluster-token robustmq-local \
        --initial-cluster-state new
done
say "etcd: waiting for the 3 members to elect a leader"
deadline=$((SECONDS + TIMEOUT))
for i in 0 1 2; do
    until httpHas "http://127.0.0.1:${ETCD_CLIENT[i]}/health" '"true"'; do
        alive "${ETCD[i]}" || failed "${ETCD[i]}" "exited"
        ((SECONDS < deadline)) || failed "${ETCD[i]}" "was not healthy within ${TIMEOUT}s"
        sleep 0.3
    done
done

# The node configs' ports, shifted: ROBUSTMQ_* variables override the files.
servers="[\"127.0.0.1:${PB_PORTS[0]}\", \"127.0.0.1:${PB_PORTS[1]}\", \"127.0.0.1:${PB_PORTS[2]}\"]"
etcdEndpoints=""
for i in 0 1 2; do etcdEndpoints+="${etcdEndpoints:+, }\"http://127.0.0.1:${ETCD_CLIENT[i]}\""; done
portsOf() {
    local name="$1" i
    i=$((${1##*-} - 1))
    local vars=("ROBUSTMQ_PLACEMENT__SERVERS=$servers")
    case "$name" in
    placement-*)
        vars+=("ROBUSTMQ_PLACEMENT__PORT=${PB_PORTS[i]}"
            "ROBUSTMQ_PLACEMENT__ADVERTISE=\"127.0.0.1:${PB_PORTS[i]}\""
            "ROBUSTMQ_PLACEMENT__ETCD_ENDPOINTS=[$etcdEndpoints]")
        ;;
    broker-*)
        vars+=("ROBUSTMQ_CLUSTER__PORT=${LINK_PORTS[i]}" "ROBUSTMQ_HTTP__PORT=${HTTP_PORTS[i]}"
            "ROBUSTMQ_LISTENERS__0__PORT=${MQTT_PORTS[i]}"
            "ROBUSTMQ_LISTENERS__1__PORT=${WS_PORTS[i]}")
        if [[ "$name" == broker-1 ]]; then
            vars+=("ROBUSTMQ_LISTENERS__2__PORT=$KAFKA_PORT" "ROBUSTMQ_LISTENERS__3__PORT=$AMQP_PORT")
        fi
        ;;
    esac
    printf '%s\n' "${vars[@]}"
}

node() {
    local name="$1" vars=()
    mkdir -p "$RUN/$name"
    mapfile -t vars < <(portsOf "$name")
    # --pidfile= : start.sh records the PID itself (twistd's default twistd.pid
    # in the shared working directory would stop the second node).
    launch "$name" env "${vars[@]}" "$TWISTD" --nodaemon --pidfile= \
        --logger=robustmq.logs.observer robustmq --config "$HERE/$name.toml"
}

# 2. The placement nodes (they run for leader through etcd).
for name in "${PLACEMENT[@]}"; do node "$name"; done
say "placement: waiting for ports ${PB_PORTS[*]}"
waitPorts "placement-1:${PB_PORTS[0]}" "placement-2:${PB_PORTS[1]}" "placement-3:${PB_PORTS[2]}"

# 3. The brokers (they register with the placement leader and link to each other).
for name in "${BROKERS[@]}"; do node "$name"; done
say "brokers: waiting for MQTT ports ${MQTT_PORTS[*]}"
waitPorts "broker-1:${MQTT_PORTS[0]}" "broker-2:${MQTT_PORTS[1]}" "broker-3:${MQTT_PORTS[2]}"
deadline=$((SECONDS + TIMEOUT))
for i in 0 1 2; do
    until httpHas "http://127.0.0.1:${HTTP_PORTS[i]}/health/ready" '"ready"'; do
        alive "${BROKERS[i]}" || failed "${BROKERS[i]}" "exited"
        ((SECONDS < deadline)) || failed "${BROKERS[i]}" "was not ready within ${TIMEOUT}s"
        sleep 0.3
    done
done

# Answers whether broker-1 sees all six nodes (3 placement, 3 brokers) alive, each
# registered by this run: a registration from an earlier run (its state is kept in
# the run directory) stays "alive" with its old uptime until it times out.
allMembers() {
    "$PYTHON" - "http://127.0.0.1:${HTTP_PORTS[0]}/api/v1/cluster" "$START_TIME" <<'EOF'
import json, sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=6) as r:
        members = json.load(r)["data"]
except (OSError, ValueError, KeyError):
    sys.exit(1)
since = float(sys.argv[2]) - 1
fresh = [m for m in members if m.get("state") == "alive" and (m.get("started_at") or 0) >= since]
sys.exit(0 if len(fresh) >= 6 else 1)
EOF
}
say "cluster: waiting until broker-1 sees all 6 nodes alive"
deadline=$((SECONDS + TIMEOUT))
until allMembers; do
    if ((SECONDS >= deadline)); then
        say "start.sh: warning: not every node joined within ${TIMEOUT}s (see the table below, and the logs)" >&2
        break
    fi
    sleep 0.5
done
finished=1

ctl="$VENV/bin/robustmq ctl"
cat <<EOF

RobustMQ cluster running on 127.0.0.1 (run directory $RUN)

  etcd         client :${ETCD_CLIENT[0]} :${ETCD_CLIENT[1]} :${ETCD_CLIENT[2]}   peer :${ETCD_PEER[0]} :${ETCD_PEER[1]} :${ETCD_PEER[2]}
  placement-1  PB 127.0.0.1:${PB_PORTS[0]}
  placement-2  PB 127.0.0.1:${PB_PORTS[1]}
  placement-3  PB 127.0.0.1:${PB_PORTS[2]}
  broker-1     MQTT :${MQTT_PORTS[0]}  ws://127.0.0.1:${WS_PORTS[0]}/mqtt  Kafka :$KAFKA_PORT  AMQP :$AMQP_PORT  admin http://127.0.0.1:${HTTP_PORTS[0]}/  link :${LINK_PORTS[0]}
  broker-2     MQTT :${MQTT_PORTS[1]}  ws://127.0.0.1:${WS_PORTS[1]}/mqtt  admin http://127.0.0.1:${HTTP_PORTS[1]}/  link :${LINK_PORTS[1]}
  broker-3     MQTT :${MQTT_PORTS[2]}  ws://127.0.0.1:${WS_PORTS[2]}/mqtt  admin http://127.0.0.1:${HTTP_PORTS[2]}/  link :${LINK_PORTS[2]}

Across nodes: subscribe on broker-2, publish on broker-1:
  mosquitto_sub -h 127.0.0.1 -p ${MQTT_PORTS[1]} -t 'demo/#' -v &
  mosquitto_pub -h 127.0.0.1 -p ${MQTT_PORTS[0]} -t demo/hello -m 'hi from broker-1' -q 1

Members:  $ctl --url http://127.0.0.1:${HTTP_PORTS[0]} cluster status
Logs:     $RUN/<node>.log
Secret:   ROBUSTMQ_PLACEMENT__CLUSTER_SECRET, from $secretFrom
Stop:     $HERE/stop.sh   (or: make cluster-stop)
EOF
say ""
"$VENV/bin/robustmq" ctl --url "http://127.0.0.1:${HTTP_PORTS[0]}" cluster status 2>&1 || true
