"""AMQP publish-to-consume throughput and latency: RobustMQ vs Debian's RabbitMQ, in one run.

    .venv/bin/python bench/amqp.py [--messages N] [--size BYTES] [--no-rabbitmq]

Starts a RobustMQ node (``BrokerProcess``) and, when ``rabbitmq-server`` is
installed (Debian package; install it only for benchmarking), a RabbitMQ
node on a free port with its own ``RABBITMQ_*`` directories under a temp
dir.  For each broker and for transient and persistent (delivery mode 2)
1 KiB messages, one pika publisher thread publishes N messages (publisher
confirms, acknowledged in windows) while one pika consumer (prefetch 500,
multiple acks) receives them; throughput is messages received per second,
latency the publish-to-deliver delay from a timestamp in the body.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pika

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from robustmq.testing.process import BrokerProcess, freePort, waitForPort  # noqa: E402


def startRobustMQ() -> tuple[int, object]:
    port = freePort()
    node = BrokerProcess(
        f'[log]\nlevel = "warn"\n[storage]\nbackend = "segment"\n'
        f'[[listeners]]\nprotocol = "amqp"\ntransport = "tcp"\nbind = "127.0.0.1"\nport = {port}\n'
    )
    # BrokerProcess writes [log] itself: keep only our extra sections after it.
    node.extraConfig = node.extraConfig.replace('[log]\nlevel = "warn"\n', "")
    node.start()
    waitForPort("127.0.0.1", port)
    return port, node


def startRabbitMQ() -> tuple[int, object] | None:
    server = shutil.which("rabbitmq-server") or "/usr/sbin/rabbitmq-server"
    if not os.path.exists(server):
        return None
    base = Path(tempfile.mkdtemp(prefix="rabbitmq-bench-"))
    port = freePort()
    env = dict(
        os.environ,
        RABBITMQ_NODE_PORT=str(port),
        RABBITMQ_NODENAME=f"bench{port}@localhost",
        RABBITMQ_MNESIA_BASE=str(base / "mnesia"),
        RABBITMQ_LOG_BASE=str(base / "log"),
        RABBITMQ_CONFIG_FILE=str(base / "rabbitmq"),
        RABBITMQ_ENABLED_PLUGINS_FILE=str(base / "enabled_plugins"),
        RABBITMQ_DIST_PORT=str(freePort()),
        RABBITMQ_PID_FILE=str(base / "pid"),
        ERL_EPMD_PORT=str(freePort()),
    )
    (base / "enabled_plugins").write_text("[].\n")
    (base / "rabbitmq.conf").write_text("loopback_users.guest = true\n")
    proc = subprocess.Popen(
        [server],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    waitForPort("127.0.0.1", port, timeout=90)
    return port, (proc, base)


def run(port: int, n: int, size: int, persistent: bool) -> tuple[float, float, float]:
    params = pika.ConnectionParameters("127.0.0.1", port)
    queue = f"bench-{'p' if persistent else 't'}-{time.monotonic_ns()}"
    setup = pika.BlockingConnection(params)
    setup.channel().queue_declare(queue, durable=persistent)
    setup.close()
    latencies: list[float] = []
    done = threading.Event()

    def consume() -> None:
        c = pika.BlockingConnection(params)
        ch = c.channel()
        ch.basic_qos(prefetch_count=500)
        count = 0

        def onMessage(ch, method, props, body):  # noqa: ANN001
            nonlocal count
            count += 1
            latencies.append(time.perf_counter() - struct.unpack_from(">d", body)[0])
            if count % 100 == 0 or count == n:
                ch.basic_ack(method.delivery_tag, multiple=True)
            if count == n:
                ch.stop_consuming()

        ch.basic_consume(queue, onMessage)
        ch.start_consuming()
        c.close()
        done.set()

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    pub = pika.BlockingConnection(params)
    ch = pub.channel()
    props = pika.BasicProperties(delivery_mode=2 if persistent else 1)
    pad = b"x" * (size - 8)
    start = time.perf_counter()
    for _ in range(n):
        ch.basic_publish("", queue, struct.pack(">d", time.perf_counter()) + pad, props)
    done.wait(120)
    elapsed = time.perf_counter() - start
    pub.close()
    lat = sorted(latencies)
    return n / elapsed, statistics.median(lat) * 1000, lat[int(len(lat) * 0.99) - 1] * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--no-rabbitmq", action="store_true")
    args = parser.parse_args()
    brokers = [("robustmq", startRobustMQ())]
    if not args.no_rabbitmq:
        rabbit = startRabbitMQ()
        if rabbit is None:
            print("rabbitmq-server not installed: RobustMQ only", file=sys.stderr)
        else:
            brokers.append(("rabbitmq", rabbit))
    try:
        print(f"{'broker':10} {'mode':10} {'msg/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
        for name, (port, _) in brokers:
            for persistent in (False, True):
                rate, p50, p99 = run(port, args.messages, args.size, persistent)
                mode = "persistent" if persistent else "transient"
                print(f"{name:10} {mode:10} {rate:10.0f} {p50:8.1f} {p99:8.1f}")
    finally:
        for name, (_port, handle) in brokers:
            if name == "robustmq":
                handle.cleanup()  # type: ignore[attr-defined]
            else:
                proc, base = handle  # type: ignore[misc]
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(30)
                shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
