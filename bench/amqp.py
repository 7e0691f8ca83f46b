"""AMQP publish-to-consume throughput and latency: RobustMQ vs Debian's RabbitMQ, in one run.

    .venv/bin/python bench/amqp.py [--messages N] [--pairs P] [--size BYTES]
                                   [--broker-cpus 0] [--client-cpus 1] [--no-rabbitmq]

RabbitMQ comes from Debian (``apt-get install -y rabbitmq-server``; for this
bench only, the tests do not need it).  The script starts both brokers itself
on free loopback ports: RobustMQ with ``BrokerProcess`` (segment store), and
RabbitMQ from ``/usr/lib/rabbitmq/bin/rabbitmq-server`` with its own
``RABBITMQ_*`` directories, cookie (``HOME``) and epmd on free ports under a
temp dir, all removed afterwards.  Nothing of the system RabbitMQ service is
used or touched.

Load: P publisher processes and P consumer processes (pika ``SelectConnection``,
one queue per pair), so the load generator is several processes and not one
Python thread.  Each broker is pinned to ``--broker-cpus`` and the clients to
``--client-cpus`` (taskset / sched_setaffinity), so both brokers get the same
CPU and do not compete with their load generator.  Per mode:

- transient: non-durable queues, delivery mode 1, no publisher confirms;
- persistent: durable queues, delivery mode 2, publisher confirms (window of
  1000 unconfirmed per publisher; RobustMQ's segment store confirms after
  its write, per ``[storage] sync``);

consumers use prefetch 1000 and ack with ``multiple`` every 100.  Throughput
is messages consumed per second from the common start to the last delivery.
Latency is measured in a second, rate-limited phase (``--latency-rate``
messages/s in total, so queues stay near empty) from a monotonic timestamp in
the body to its delivery.  CPU columns are the broker's and the clients' CPU
seconds per wall second during the throughput phase (1.00 = one core busy):
a broker near 1.00 per pinned core is the bottleneck, clients near their core
count would mean the load generator is.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pika

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from robustmq.testing.process import BrokerProcess, freePort, waitForPort  # noqa: E402

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
WINDOW = 1000  # unconfirmed messages per publisher (persistent mode)
PREFETCH = 1000
ACK_EVERY = 100
BURST = 200  # messages a publisher writes per turn of its ioloop
WRITE_BUFFER = 1 << 20  # publisher pauses while pika holds more unsent bytes
DEADLINE = 120.0  # seconds any phase may take
_TS = struct.Struct(">d")


def now() -> float:
    """CLOCK_MONOTONIC: the same clock in every process of this machine."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def cpuSeconds(pids: list[int]) -> float:
    """User + system CPU seconds of C{pids} (all their threads) so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / tick


def pin(pid: int, cpus: set[int] | None) -> None:
    """Pin every thread of C{pid} to C{cpus}."""
    if not cpus:
        return
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), cpus)
        except OSError:
            pass


class Broker:
    """A broker under test: its AMQP port, the pids whose CPU we count, and how to stop it."""

    name = ""
    port = 0

    def pids(self) -> list[int]:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class Running(Broker):
    """An AMQP broker someone else started (C{--port}), e.g. under a profiler."""

    name = "external"

    def __init__(self, port: int, pid: int | None) -> None:
        self.port = port
        self.pid = pid

    def pids(self) -> list[int]:
        return [self.pid] if self.pid else []

    def stop(self) -> None:
        pass


class QuietBrokerProcess(BrokerProcess):
    """BrokerProcess with warn-level logging (its default is debug)."""

    def writeConfig(self) -> None:
        super().writeConfig()
        self.configPath.write_text(
            self.configPath.read_text().replace('level = "debug"', 'level = "warn"')
        )

    def waitForOutput(self, text: str, timeout: float = 10.0) -> str:
        # The "broker started" line is info level: wait for the AMQP port instead.
        return ""


class RobustMQ(Broker):
    name = "robustmq"

    def __init__(self, cpus: set[int] | None) -> None:
        self.port = freePort()
        self.node = QuietBrokerProcess(
            '[storage]\nbackend = "segment"\n'
            f'[[listeners]]\nprotocol = "amqp"\ntransport = "tcp"\nbind = "127.0.0.1"\n'
            f"port = {self.port}\n"
        )
        self.node.start()
        waitForPort("127.0.0.1", self.port)
        assert self.node.process is not None
        self.pid = self.node.process.pid
        pin(self.pid, cpus)

    def pids(self) -> list[int]:
        return [self.pid]

    def stop(self) -> None:
        self.node.cleanup()


class RabbitMQ(Broker):
    name = "rabbitmq"

    def __init__(self, cpus: set[int] | None) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="rabbitmq-bench-"))
        self.port = freePort()
        epmdPort = freePort()
        env = dict(
            os.environ,
            HOME=str(self.base),  # the Erlang cookie goes here
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_NODENAME=f"bench{self.port}@localhost",
            RABBITMQ_MNESIA_BASE=str(self.base / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.base / "log"),
            RABBITMQ_CONFIG_FILE=str(self.base / "rabbitmq"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.base / "enabled_plugins"),
            RABBITMQ_DIST_PORT=str(freePort()),
            RABBITMQ_PID_FILE=str(self.base / "pid"),
            ERL_EPMD_PORT=str(epmdPort),
            ERL_EPMD_ADDRESS="127.0.0.1",
        )
        (self.base / "enabled_plugins").write_text("[].\n")
        (self.base / "rabbitmq.conf").write_text("loopback_users.guest = true\n")
        prefix = ["taskset", "-c", ",".join(map(str, sorted(cpus)))] if cpus else []
        # Our own epmd in the foreground, so that it is ours to stop.
        epmd = shutil.which("epmd") or "/usr/bin/epmd"
        self.epmd = subprocess.Popen(
            [epmd, "-port", str(epmdPort), "-address", "127.0.0.1"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.proc = subprocess.Popen(
            [*prefix, RABBITMQ_SERVER],
            env=env,
            stdout=open(self.base / "stdout.log", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            waitForPort("127.0.0.1", self.port, timeout=90)
        except TimeoutError:
            print((self.base / "stdout.log").read_text()[-3000:], file=sys.stderr)
            self.stop()
            raise

    def pids(self) -> list[int]:
        """Every process of RabbitMQ's session (the script, beam.smp, erl_child_setup...)."""
        out = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == self.proc.pid:  # process group
                out.append(int(stat.parent.name))
        return out

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self.epmd.terminate()
        self.epmd.wait(10)
        shutil.rmtree(self.base, ignore_errors=True)


# -- load generator processes ------------------------------------------


def _params(port: int) -> pika.ConnectionParameters:
    return pika.ConnectionParameters("127.0.0.1", port, heartbeat=0)


def _waitStart(ioloop: Any, start: Any, then: Any) -> None:
    if start.value and now() >= start.value:
        then()
    else:
        ioloop.call_later(0.002, lambda: _waitStart(ioloop, start, then))


def consumerMain(
    port: int,
    queue: str,
    durable: bool,
    n: int,
    cpus: set[int] | None,
    ready: Any,
    start: Any,
    results: Any,
) -> None:
    """Consume C{n} messages from C{queue}; report count, last delivery time, latencies, CPU."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    state: dict[str, Any] = {"count": 0, "last": 0.0}
    latencies: list[float] = []

    def onOpen(conn: Any) -> None:
        conn.channel(on_open_callback=onChannel)

    def onChannel(ch: Any) -> None:
        ch.queue_declare(queue, durable=durable, callback=lambda _: qos(ch))

    def qos(ch: Any) -> None:
        ch.basic_qos(prefetch_count=PREFETCH, callback=lambda _: consume(ch))

    def consume(ch: Any) -> None:
        ch.basic_consume(queue, onMessage, callback=lambda _: ready.put(1))

    def onMessage(ch: Any, method: Any, props: Any, body: bytes) -> None:
        t = now()
        state["count"] += 1
        state["last"] = t
        latencies.append(t - _TS.unpack_from(body)[0])
        count = state["count"]
        if count % ACK_EVERY == 0 or count == n:
            ch.basic_ack(method.delivery_tag, multiple=True)
        if count == n:
            ch.connection.ioloop.call_later(0.05, ch.connection.close)

    conn = pika.SelectConnection(_params(port), on_open_callback=onOpen)
    conn.add_on_close_callback(lambda *_: conn.ioloop.stop())
    conn.ioloop.call_later(DEADLINE, conn.ioloop.stop)
    conn.ioloop.start()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    results.put(
        ("consumer", state["count"], state["last"], latencies, usage.ru_utime + usage.ru_stime)
    )


def publisherMain(
    port: int,
    queue: str,
    durable: bool,
    n: int,
    size: int,
    confirm: bool,
    rate: float,
    cpus: set[int] | None,
    ready: Any,
    start: Any,
    results: Any,
) -> None:
    """Publish C{n} messages to C{queue} as fast as allowed, or at C{rate} per second."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    props = pika.BasicProperties(delivery_mode=2 if durable else 1)
    pad = b"x" * (size - _TS.size)
    state = {"sent": 0, "acked": 0, "t0": 0.0}
    conn: Any = None
    channel: Any = None

    def onOpen(c: Any) -> None:
        c.channel(on_open_callback=onChannel)

    def onChannel(ch: Any) -> None:
        nonlocal channel
        channel = ch
        if confirm:
            ch.confirm_delivery(onConfirm, callback=lambda _: declare())
        else:
            declare()

    def declare() -> None:
        channel.queue_declare(queue, durable=durable, callback=lambda _: armed())

    def armed() -> None:
        ready.put(1)
        _waitStart(conn.ioloop, start, begin)

    def begin() -> None:
        state["t0"] = now()
        pump()

    def onConfirm(frame: Any) -> None:
        m = frame.method
        if isinstance(m, pika.spec.Basic.Ack):
            state["acked"] = max(state["acked"], m.delivery_tag)
        if state["acked"] >= n:
            conn.close()
            return
        if state["sent"] - state["acked"] < WINDOW // 2 and state.get("waiting"):
            state["waiting"] = False
            pump()

    def pump() -> None:
        sent = state["sent"]
        if sent >= n:
            return
        if confirm and sent - state["acked"] >= WINDOW:
            state["waiting"] = True
            return
        transport = getattr(conn, "_transport", None)
        if transport is not None and transport.get_write_buffer_size() > WRITE_BUFFER:
            conn.ioloop.call_later(0.001, pump)
            return
        if rate:
            due = int((now() - state["t0"]) * rate) + 1
            burst = min(due - sent, n - sent)
        else:
            burst = min(BURST, n - sent)
        if confirm:
            burst = min(burst, WINDOW - (sent - state["acked"]))
        for _ in range(max(0, burst)):
            channel.basic_publish("", queue, _TS.pack(now()) + pad, props)
        state["sent"] = sent = sent + max(0, burst)
        if sent >= n:
            if not confirm:
                conn.ioloop.call_later(0.2, conn.close)
            return
        conn.ioloop.call_later(0.001 if rate else 0, pump)

    conn = pika.SelectConnection(_params(port), on_open_callback=onOpen)
    conn.add_on_close_callback(lambda *_: conn.ioloop.stop())
    conn.ioloop.call_later(DEADLINE, conn.ioloop.stop)
    conn.ioloop.start()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    results.put(("publisher", state["sent"], 0.0, [], usage.ru_utime + usage.ru_stime))


def phase(
    broker: Broker,
    pairs: int,
    n: int,
    size: int,
    persistent: bool,
    rate: float,
    cpus: set[int] | None,
) -> dict[str, float]:
    """One run: P publishers and P consumers, N messages in total."""
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Queue()
    results = ctx.Queue()
    start = ctx.Value("d", 0.0)
    tag = f"{'p' if persistent else 't'}{'l' if rate else ''}-{time.monotonic_ns()}"
    per = n // pairs
    procs = []
    for i in range(pairs):
        queue = f"bench-{tag}-{i}"
        procs.append(
            ctx.Process(
                target=consumerMain,
                args=(broker.port, queue, persistent, per, cpus, ready, start, results),
            )
        )
        procs.append(
            ctx.Process(
                target=publisherMain,
                args=(
                    broker.port,
                    queue,
                    persistent,
                    per,
                    size,
                    persistent,
                    rate / pairs,
                    cpus,
                    ready,
                    start,
                    results,
                ),
            )
        )
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=30)
    pids = broker.pids()
    cpu0 = cpuSeconds(pids)
    t0 = now() + 0.2
    start.value = t0
    got = [results.get(timeout=DEADLINE + 30) for _ in procs]
    cpu1 = cpuSeconds(pids)
    for p in procs:
        p.join(10)
    consumers = [g for g in got if g[0] == "consumer"]
    received = sum(g[1] for g in consumers)
    end = max(g[2] for g in consumers)
    elapsed = max(end - t0, 1e-9)
    lat = sorted(x for g in consumers for x in g[3])
    return {
        "rate": received / elapsed,
        "received": received,
        "sent": per * pairs,
        "p50": statistics.median(lat) * 1000 if lat else float("nan"),
        "p99": lat[max(0, int(len(lat) * 0.99) - 1)] * 1000 if lat else float("nan"),
        "brokerCpu": (cpu1 - cpu0) / elapsed,
        "clientCpu": sum(g[4] for g in got) / elapsed,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=40000, help="per mode, all pairs")
    parser.add_argument("--pairs", type=int, default=2, help="publisher/consumer processes")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--latency-rate", type=float, default=2000.0)
    parser.add_argument("--latency-seconds", type=float, default=3.0)
    parser.add_argument("--broker-cpus", default="0", help="e.g. 0 or 0,1; empty: no pinning")
    parser.add_argument("--client-cpus", default="1")
    parser.add_argument("--modes", default="transient,persistent")
    parser.add_argument("--no-rabbitmq", action="store_true")
    parser.add_argument("--port", type=int, help="measure a broker already on this port instead")
    parser.add_argument("--pid", type=int, help="with --port: its pid, for the CPU column")
    args = parser.parse_args()

    def cpus(s: str) -> set[int] | None:
        return {int(c) for c in s.split(",")} if s else None

    brokerCpus, clientCpus = cpus(args.broker_cpus), cpus(args.client_cpus)
    kinds: list[type[Broker]] = [RobustMQ]
    if not args.no_rabbitmq:
        if os.path.exists(RABBITMQ_SERVER):
            kinds.append(RabbitMQ)
        else:
            print("rabbitmq-server not installed: RobustMQ only", file=sys.stderr)
    print(
        f"# {args.messages} x {args.size} B per mode, {args.pairs} publisher + {args.pairs} "
        f"consumer processes; broker CPUs {args.broker_cpus or 'any'}, "
        f"client CPUs {args.client_cpus or 'any'}; latency at {args.latency_rate:.0f} msg/s"
    )
    print(
        f"{'broker':9} {'mode':10} {'msg/s':>8} {'brk cpu':>7} {'cli cpu':>7} "
        f"{'us/msg':>6} {'p50 ms':>7} {'p99 ms':>7}"
    )
    table: dict[tuple[str, str], dict[str, float]] = {}
    if args.port:
        kinds = [lambda _cpus: Running(args.port, args.pid)]  # type: ignore[list-item]
    for kind in kinds:
        broker = kind(brokerCpus)
        try:
            for mode in args.modes.split(","):
                persistent = mode == "persistent"
                r = phase(broker, args.pairs, args.messages, args.size, persistent, 0, clientCpus)
                n = int(args.latency_rate * args.latency_seconds)
                lat = phase(broker, 1, n, args.size, persistent, args.latency_rate, clientCpus)
                r["p50"], r["p99"] = lat["p50"], lat["p99"]
                table[(broker.name, mode)] = r
                r["usPerMsg"] = r["brokerCpu"] / r["rate"] * 1e6
                lost = "" if r["received"] == r["sent"] else f"  ({r['received']:.0f} received!)"
                print(
                    f"{broker.name:9} {mode:10} {r['rate']:8.0f} {r['brokerCpu']:7.2f} "
                    f"{r['clientCpu']:7.2f} {r['usPerMsg']:6.1f} {r['p50']:7.2f} {r['p99']:7.2f}{lost}",
                    flush=True,
                )
        finally:
            broker.stop()
    if len(kinds) == 2:
        for mode in args.modes.split(","):
            a, b = table[("robustmq", mode)], table[("rabbitmq", mode)]
            print(
                f"robustmq/rabbitmq {mode:10} throughput x{a['rate'] / b['rate']:.2f}, "
                f"broker CPU per message x{a['usPerMsg'] / b['usPerMsg']:.2f}, "
                f"p50 latency x{a['p50'] / b['p50']:.2f}, p99 latency x{a['p99'] / b['p99']:.2f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
