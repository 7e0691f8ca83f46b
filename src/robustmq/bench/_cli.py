"""The ``robustmq bench`` command line: parse arguments, run one benchmark, print it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from . import _conn, _latency, _throughput
from ._client import BenchError, check_loopback
from ._pub import PubSpec
from ._report import emit


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="broker address (loopback only)")
    parser.add_argument("--port", type=int, default=1883, help="broker MQTT port")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--connect-timeout", type=float, default=10.0, help="seconds per handshake")


def _messages(parser: argparse.ArgumentParser, count: int, duration: float) -> None:
    parser.add_argument("--topic", default="bench/t", help="topic to publish/subscribe")
    parser.add_argument("--qos", type=int, choices=(0, 1), default=0)
    parser.add_argument("--size", type=int, default=64, help="payload bytes")
    parser.add_argument(
        "--count", type=int, default=count, help="messages per publisher (default %(default)s)"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=duration,
        help="hard deadline for publishing, seconds (default %(default)s)",
    )
    parser.add_argument(
        "--idle",
        type=float,
        default=3.0,
        help="subscribers stop after this many seconds without data",
    )


def _flow(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--window", type=int, default=1000, help="QoS 1: unacknowledged PUBLISHes per publisher"
    )
    parser.add_argument(
        "--rate", type=float, default=0.0, help="msg/s per publisher, 0 = as fast as possible"
    )
    parser.add_argument(
        "--ack-coalesce",
        type=float,
        default=0.0002,
        help="QoS 1: seconds a publisher naps before reading a stream of PUBACKs (0 = off)",
    )


def _batching(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--coalesce",
        type=float,
        default=0.001,
        help="seconds a busy subscriber naps per wake-up to read in bulk (0 = off)",
    )


def _cluster(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sub-port",
        type=int,
        default=None,
        help="subscribers' MQTT port, e.g. another broker of a cluster (default: --port)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=0.0,
        help="seconds between the subscribers' SUBACKs and the start of publishing, "
        "e.g. for a cluster's new route to reach the publishers' broker (default 0)",
    )


def _pids(text: str) -> tuple[int, ...]:
    try:
        pids = tuple(int(p) for p in text.split(",") if p)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected pids separated by commas: {text!r}") from None
    return pids


def _ports(text: str) -> tuple[int, ...]:
    try:
        ports = tuple(int(p) for p in text.split(",") if p)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected port numbers separated by commas: {text!r}"
        ) from None
    if not all(0 < p < 65536 for p in ports):
        raise argparse.ArgumentTypeError(f"not a port number in {text!r}")
    return ports


def _sources(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pub-source-ports",
        type=_ports,
        default=(),
        metavar="PORT[,PORT...]",
        help="local ports of publishers 0, 1, ... (a node with worker processes picks "
        "the worker by the connection's addresses; see bench/workers.py)",
    )
    parser.add_argument(
        "--sub-source-ports",
        type=_ports,
        default=(),
        metavar="PORT[,PORT...]",
        help="local ports of subscribers 0, 1, ...",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every ``bench`` subcommand."""
    parser = argparse.ArgumentParser(
        prog="robustmq bench",
        description="Load generator for MQTT 3.1.1 brokers on this machine.",
    )
    sub = parser.add_subparsers(dest="mode", required=True)

    thr = sub.add_parser("throughput", help="publishers -> broker -> subscribers, msg/s received")
    _common(thr)
    _messages(thr, count=1_000_000, duration=60.0)
    _flow(thr)
    _batching(thr)
    _cluster(thr)
    thr.add_argument("--publishers", type=int, default=1)
    thr.add_argument("--subscribers", type=int, default=1)
    thr.add_argument(
        "--pairs",
        type=int,
        default=0,
        help="N publisher/subscriber pairs, pair i on its own topic <topic>/<i> "
        "(overrides --publishers and --subscribers)",
    )
    _sources(thr)
    thr.add_argument(
        "--persistent",
        action="store_true",
        help="subscribers keep persistent sessions (clean session 0): at QoS 1 the broker "
        "stores each message for them before acknowledging it",
    )
    thr.add_argument(
        "--sub-procs",
        type=int,
        default=0,
        help="processes sharing the subscribers (default: one per usable CPU)",
    )

    pub = sub.add_parser("pub", help="publishers only, msg/s sent (and acknowledged at QoS 1)")
    _common(pub)
    _messages(pub, count=1_000_000, duration=60.0)
    _flow(pub)
    pub.add_argument("--publishers", type=int, default=1)

    sbs = sub.add_parser("sub", help="subscribers only, msg/s received from other publishers")
    _common(sbs)
    _messages(sbs, count=1_000_000, duration=60.0)
    _batching(sbs)
    sbs.add_argument("--subscribers", type=int, default=1)
    sbs.add_argument("--sub-procs", type=int, default=0)

    lat = sub.add_parser("latency", help="one paced publisher, one subscriber, percentiles")
    _common(lat)
    _messages(lat, count=10_000, duration=60.0)
    lat.add_argument("--rate", type=float, default=1000.0, help="msg/s (default %(default)s)")
    _cluster(lat)
    _sources(lat)

    con = sub.add_parser("conn", help="idle connections, broker RSS per connection")
    _common(con)
    con.add_argument("--connections", type=int, default=10_000)
    con.add_argument(
        "--pid",
        type=_pids,
        default=(),
        metavar="PID[,PID...]",
        help="broker pid(s) whose RSS to read and add up (a node's processes)",
    )
    con.add_argument(
        "--sources",
        default="",
        metavar="ADDR[,ADDR...]",
        help="local addresses (127.0.0.x) the generator processes connect from, in turn "
        "(each has ~28,000 ephemeral ports towards one broker port)",
    )
    con.add_argument(
        "--per-process",
        type=int,
        default=_conn.DEFAULT_PER_PROCESS,
        help="connections per worker process (open-file limit)",
    )
    con.add_argument("--window", type=int, default=256, help="handshakes in flight per process")
    con.add_argument("--settle", type=float, default=1.0, help="seconds before reading RSS")
    con.add_argument("--hold", type=float, default=0.0, help="extra seconds to hold them open")
    con.add_argument("--duration", type=float, default=120.0, help="deadline for opening")
    return parser


def _run_throughput(args: argparse.Namespace) -> dict[str, Any]:
    publishers = 0 if args.mode == "sub" else args.publishers
    subscribers = 0 if args.mode == "pub" else args.subscribers
    pub = PubSpec(
        host=args.host,
        port=args.port,
        topic=args.topic,
        qos=args.qos,
        size=args.size,
        count=args.count,
        duration=args.duration,
        window=getattr(args, "window", 1000),
        rate=getattr(args, "rate", 0.0),
        coalesce=getattr(args, "ack_coalesce", 0.0),
        connect_timeout=args.connect_timeout,
        source_ports=getattr(args, "pub_source_ports", ()),
    )
    spec = _throughput.ThroughputSpec(
        pub=pub,
        publishers=publishers,
        subscribers=subscribers,
        sub_procs=getattr(args, "sub_procs", 0),
        idle=args.idle,
        coalesce=getattr(args, "coalesce", 0.0),
        sub_port=getattr(args, "sub_port", None),
        settle=getattr(args, "settle", 0.0),
        pairs=getattr(args, "pairs", 0),
        sub_source_ports=getattr(args, "sub_source_ports", ()),
        persistent=getattr(args, "persistent", False),
    )
    return _throughput.run(spec)


def _run_latency(args: argparse.Namespace) -> dict[str, Any]:
    return _latency.run(
        _latency.LatencySpec(
            host=args.host,
            port=args.port,
            topic=args.topic,
            qos=args.qos,
            size=args.size,
            rate=args.rate,
            count=args.count,
            duration=args.duration,
            idle=args.idle,
            connect_timeout=args.connect_timeout,
            sub_port=args.sub_port,
            settle=args.settle,
            pub_source_port=(args.pub_source_ports or (0,))[0],
            sub_source_port=(args.sub_source_ports or (0,))[0],
        )
    )


def _run_conn(args: argparse.Namespace) -> dict[str, Any]:
    return _conn.run(
        _conn.ConnSpec(
            host=args.host,
            port=args.port,
            connections=args.connections,
            pid=args.pid[0] if args.pid else None,
            more_pids=tuple(args.pid[1:]),
            sources=tuple(a for a in args.sources.split(",") if a),
            per_process=args.per_process,
            window=args.window,
            settle=args.settle,
            hold=args.hold,
            duration=args.duration,
        )
    )


_RUNNERS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "throughput": _run_throughput,
    "pub": _run_throughput,
    "sub": _run_throughput,
    "latency": _run_latency,
    "conn": _run_conn,
}


def main(argv: list[str]) -> int:
    """Run one benchmark; 0 on success, 1 if it could not run, 2 on bad arguments."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else 2
    try:
        check_loopback(args.host)
        if getattr(args, "count", 1) < 1 or getattr(args, "size", 0) < 0:
            raise BenchError("--count must be positive and --size not negative")
        if getattr(args, "settle", 0.0) < 0:
            raise BenchError("--settle must not be negative")
        result = {"mode": args.mode, **_RUNNERS[args.mode](args)}
    except BenchError as exc:
        print(f"robustmq bench {args.mode}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    emit(result, args.json, sys.stdout)
    return 0
