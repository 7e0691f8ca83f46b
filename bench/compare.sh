#!/usr/bin/env bash
# Measure RobustMQ and Debian's mosquitto side by side on loopback, in one run.
#
# Each broker is pinned to one core (taskset -c $BROKER_CPU, default 0), the
# load generator (`python -m robustmq.bench`) to another (GEN_CPU, default 1).
# Brokers run one at a time, each on its own free port, and are stopped by PID
# when the script exits.  Prints a markdown table: both numbers and the ratio
# RobustMQ/mosquitto for every row.
#
#   bench/compare.sh                    # the full run (a few minutes)
#   bench/compare.sh --quick            # small counts: a smoke test (~30 s)
#   bench/compare.sh --only mosquitto   # one broker only
#   bench/compare.sh --tests qos1p      # some tests only (conn,qos0,qos1,fanout,latency,qos1p)
#
# A second table compares RobustMQ's sync policies on QoS 1 to a persistent
# session (each message stored before its PUBACK): the default `interval`
# against `always` (acknowledge after the group commit's fsync).
#
# Environment: VENV (default .venv next to this repo), BROKER_CPU, GEN_CPU,
# MOSQUITTO (path to the binary), KEEP=1 to keep the temp dir (logs, JSON).
set -euo pipefail

usage() {
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

ONLY=""
QUICK=0
TESTS="conn,qos0,qos1,fanout,latency,qos1p"
while [ $# -gt 0 ]; do
    case "$1" in
        --only) ONLY="${2:-}"; shift 2 ;;
        --only=*) ONLY="${1#--only=}"; shift ;;
        --quick) QUICK=1; shift ;;
        --tests) TESTS="${2:-}"; shift 2 ;;
        --tests=*) TESTS="${1#--tests=}"; shift ;;
        -h|--help) usage 0 ;;
        *) echo "compare.sh: unknown argument $1" >&2; usage 2 >&2 ;;
    esac
done
case "$ONLY" in
    ""|mosquitto|robustmq) ;;
    *) echo "compare.sh: --only takes mosquitto or robustmq" >&2; exit 2 ;;
esac

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
BROKER_CPU="${BROKER_CPU:-0}"
GEN_CPU="${GEN_CPU:-1}"
MOSQUITTO="${MOSQUITTO:-$(command -v mosquitto || echo /usr/sbin/mosquitto)}"

if [ "$QUICK" = 1 ]; then
    CONNS=500; N_QOS0=50000; N_QOS1=20000; N_FANOUT=500; N_LAT=500; N_QOS1P=10000
else
    CONNS=10000; N_QOS0=2000000; N_QOS1=1000000; N_FANOUT=50000; N_LAT=10000; N_QOS1P=200000
fi
DURATION=60   # hard deadline per run, seconds of publishing

TMP="$(mktemp -d -t robustmq-compare.XXXXXX)"
BROKER_PID=""

stop_broker() {
    if [ -n "$BROKER_PID" ]; then
        kill "$BROKER_PID" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$BROKER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
        BROKER_PID=""
    fi
}

cleanup() {
    stop_broker
    if [ "${KEEP:-0}" = 1 ]; then
        echo "kept $TMP" >&2
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "compare.sh: $*" >&2; }

free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_listening() {  # port, seconds, pid: fails early if the pid exits
    "$PY" - "$1" "$2" "$3" <<'EOF'
import os, socket, sys, time
port, deadline, pid = int(sys.argv[1]), time.monotonic() + float(sys.argv[2]), int(sys.argv[3])
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(1)
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit(1)
EOF
}

start_mosquitto() {  # port
    if [ ! -x "$MOSQUITTO" ]; then
        log "skipping mosquitto: $MOSQUITTO not found (apt-get install mosquitto)"
        return 1
    fi
    local conf="$TMP/mosquitto.conf"
    # max_inflight 1000 matches the generator's QoS 1 window (the default, 20,
    # would measure round trips); the queue is big enough that no QoS 0/1
    # message is dropped at these counts; NODELAY as any latency-minded broker.
    cat > "$conf" <<EOF
listener $1 127.0.0.1
allow_anonymous true
max_queued_messages 100000
max_inflight_messages 1000
set_tcp_nodelay true
persistence false
EOF
    taskset -c "$BROKER_CPU" "$MOSQUITTO" -c "$conf" > "$TMP/mosquitto.log" 2>&1 &
    BROKER_PID=$!
}

start_robustmq() {  # port [sync policy]
    if [ ! -x "$VENV/bin/robustmq" ]; then
        log "skipping robustmq: $VENV/bin/robustmq is not installed (pip install -e .)"
        return 1
    fi
    local conf="$TMP/robustmq.toml"
    rm -rf "$TMP/robustmq-data"
    mkdir -p "$TMP/robustmq-data"
    cat > "$conf" <<EOF
[node]
data_dir = "$TMP/robustmq-data"
[storage]
sync = "${2:-interval}"
[[listeners]]
protocol = "mqtt"
transport = "tcp"
bind = "127.0.0.1"
port = $1
EOF
    taskset -c "$BROKER_CPU" "$VENV/bin/robustmq" start --config "$conf" > "$TMP/robustmq.log" 2>&1 &
    BROKER_PID=$!
}

bench() {  # broker test args... : JSON into $TMP/<broker>.<test>.json
    local broker="$1" test="$2"
    shift 2
    case ",$TESTS," in
        *",$test,"*) ;;
        *) return 0 ;;
    esac
    log "$broker: $test"
    if ! taskset -c "$GEN_CPU" "$PY" -m robustmq.bench "$@" --json \
        > "$TMP/$broker.$test.json" 2> "$TMP/$broker.$test.err"; then
        log "$broker: $test failed: $(tail -n 3 "$TMP/$broker.$test.err")"
        rm -f "$TMP/$broker.$test.json"
    fi
}

measure() {  # broker
    local broker="$1" port
    port="$(free_port)"
    if ! "start_$broker" "$port"; then
        return 0
    fi
    if ! wait_listening "$port" 20 "$BROKER_PID"; then
        log "skipping $broker: it exited or is not listening on 127.0.0.1:$port after 20 s; its log ends:"
        tail -n 15 "$TMP/$broker.log" >&2 || true
        stop_broker
        return 0
    fi
    log "$broker: pid $BROKER_PID on 127.0.0.1:$port, core $BROKER_CPU"
    local common=(--host 127.0.0.1 --port "$port")
    # Idle connections first, while the broker's heap is fresh.
    bench "$broker" conn conn "${common[@]}" --connections "$CONNS" --pid "$BROKER_PID"
    bench "$broker" qos0 throughput "${common[@]}" --qos 0 --size 64 \
        --count "$N_QOS0" --duration "$DURATION"
    bench "$broker" qos1 throughput "${common[@]}" --qos 1 --size 64 \
        --count "$N_QOS1" --duration "$DURATION"
    bench "$broker" fanout throughput "${common[@]}" --qos 0 --size 64 --subscribers 100 \
        --count "$N_FANOUT" --duration "$DURATION"
    bench "$broker" latency latency "${common[@]}" --qos 0 --size 64 --rate 1000 \
        --count "$N_LAT" --duration "$DURATION"
    bench "$broker" qos1p throughput "${common[@]}" --qos 1 --size 64 --persistent \
        --count "$N_QOS1P" --duration "$DURATION"
    if ! kill -0 "$BROKER_PID" 2>/dev/null; then
        log "$broker died during the run; its log ends:"
        tail -n 15 "$TMP/$broker.log" >&2 || true
    fi
    stop_broker
}

measure_always() {  # RobustMQ with sync = "always": QoS 1 to a persistent session
    local port
    port="$(free_port)"
    start_robustmq "$port" always || return 0
    if ! wait_listening "$port" 20 "$BROKER_PID"; then
        log "skipping robustmq (sync always): not listening after 20 s"
        stop_broker
        return 0
    fi
    log "robustmq (sync always): pid $BROKER_PID on 127.0.0.1:$port, core $BROKER_CPU"
    bench robustmq-always qos1p throughput --host 127.0.0.1 --port "$port" --qos 1 --size 64 \
        --persistent --count "$N_QOS1P" --duration "$DURATION"
    stop_broker
}

for broker in mosquitto robustmq; do
    if [ -z "$ONLY" ] || [ "$ONLY" = "$broker" ]; then
        measure "$broker"
    fi
done
if [ -z "$ONLY" ] || [ "$ONLY" = robustmq ]; then
    measure_always
fi

"$PY" - "$TMP" "$CONNS" "$QUICK" <<'EOF'
import json, os, platform, subprocess, sys

from robustmq.bench._report import cpuModel

tmp, conns, quick = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"

def load(broker, test):
    try:
        with open(os.path.join(tmp, f"{broker}.{test}.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

rows = [
    ("QoS 0 throughput 1→1, 64 B (msg/s)", "qos0", "msgs_per_sec", "higher"),
    ("QoS 1 throughput 1→1, 64 B (msg/s)", "qos1", "msgs_per_sec", "higher"),
    ("QoS 0 fan-out 1→100, 64 B (msg/s received)", "fanout", "msgs_per_sec", "higher"),
    ("Latency p50 at 1,000 msg/s (ms)", "latency", "p50_ms", "lower"),
    ("Latency p99 at 1,000 msg/s (ms)", "latency", "p99_ms", "lower"),
    ("QoS 1 1→1 to a persistent session, 64 B (msg/s)", "qos1p", "msgs_per_sec", "higher"),
    (f"RSS per idle connection at {conns:,} (KB)", "conn", "kb_per_connection", "lower"),
]

def fmt(v):
    if v is None:
        return "n/a"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3f}"

cpu = cpuModel()
print(f"Machine: {cpu}, {os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()}"
      + (" (quick mode: small counts, not for publishing)" if quick else ""))
print()
print("| Benchmark | RobustMQ | mosquitto | RobustMQ/mosquitto | better |")
print("|---|---:|---:|---:|---|")
notes = []
for label, test, key, better in rows:
    r, m = load("robustmq", test), load("mosquitto", test)
    rv = r.get(key) if r else None
    mv = m.get(key) if m else None
    ratio = f"{rv / mv:.2f}" if rv is not None and mv else "n/a"
    print(f"| {label} | {fmt(rv)} | {fmt(mv)} | {ratio} | {better} |")
print()
print("RobustMQ sync policies, QoS 1 1→1 to a persistent session, 64 B (each message is")
print("stored for the offline-capable subscriber before the PUBACK):")
print()
print("| `[storage] sync` | msg/s | lost | acknowledged after |")
print("|---|---:|---:|---|")
for name, test, when in (
    ("interval (default)", "robustmq", "write to the OS; fsync every 200 ms"),
    ("always", "robustmq-always", "the group commit's fsync"),
):
    d = load(test, "qos1p")
    print(f"| {name} | {fmt(d.get('msgs_per_sec') if d else None)} "
          f"| {d.get('lost', 'n/a') if d else 'n/a'} | {when} |")
for broker in ("robustmq", "mosquitto", "robustmq-always"):
    for test in ("qos0", "qos1", "fanout", "latency", "qos1p"):
        d = load(broker, test)
        if d and d.get("lost"):
            notes.append(f"{broker} {test}: {d['lost']:,} of {d.get('expected', d.get('sent')):,} messages not received")
        if d and any(s != "count" for s in d.get("publish_stopped", [])):
            notes.append(f"{broker} {test}: publishing stopped early ({', '.join(d['publish_stopped'])})")
if notes:
    print()
    for n in notes:
        print(f"- {n}")
EOF
