"""Throughput runs: publishers and subscribers in separate processes, released together.

The rate reported is what subscribers received, from the moment the first
publisher started sending to the moment the last message arrived, so it
measures the broker end to end and not the generator's send buffers.

In pair mode (``pairs`` > 0) publisher I{i} publishes to ``<topic>/<i>``
(four digits) and subscriber I{i} subscribes to that topic only: N
independent one-to-one flows, the load that spreads over the worker
processes of a node.
"""

from __future__ import annotations

import dataclasses
import multiprocessing.synchronize
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._client import BenchError
from ._pub import PubSpec, close_publisher, connect_publisher, publish
from ._sub import SubSpec, close_subscribers, connect_subscribers, receive, topic_of
from ._workers import Job, WorkerGroup, split, usable_cpus

GO_TIMEOUT = 120.0


@dataclass(frozen=True, slots=True)
class ThroughputSpec:
    """One throughput run: who publishes, who subscribes, how much and how long."""

    pub: PubSpec
    publishers: int
    subscribers: int
    sub_procs: int = 0  # 0: one per usable CPU, at most one per subscriber
    idle: float = 3.0
    coalesce: float = 0.001  # subscribers' nap per busy wake-up
    sub_port: int | None = None  # None: the publishers' port (another broker of a cluster)
    settle: float = 0.0  # seconds from the subscribers' SUBACKs to the publishers' start
    pairs: int = 0  # > 0: that many publisher/subscriber pairs, each on its own topic
    sub_source_ports: tuple[int, ...] = ()  # subscriber i's source port (see open_session)
    persistent: bool = False  # subscribers with persistent sessions (durable QoS 1 flow)


def _pub_job(spec: PubSpec, index: int) -> Job:
    def job(ready: Callable[[], None], go: multiprocessing.synchronize.Event) -> dict[str, Any]:
        sock = connect_publisher(spec, index)
        try:
            ready()
            if not go.wait(GO_TIMEOUT):
                raise BenchError("never released")
            return publish(sock, spec)
        finally:
            close_publisher(sock)

    return job


def _sub_job(spec: SubSpec, indices: range) -> Job:
    def job(ready: Callable[[], None], go: multiprocessing.synchronize.Event) -> dict[str, Any]:
        socks = connect_subscribers(spec, indices)
        try:
            ready()
            if not go.wait(GO_TIMEOUT):
                raise BenchError("never released")
            return receive(socks, spec)
        finally:
            close_subscribers(socks)

    return job


def run(spec: ThroughputSpec) -> dict[str, Any]:
    """Run publishers and/or subscribers (either count may be 0) and summarise."""
    pub = spec.pub
    if spec.pairs:
        spec = dataclasses.replace(spec, publishers=spec.pairs, subscribers=spec.pairs)
    if spec.publishers < 0 or spec.subscribers < 0 or not (spec.publishers or spec.subscribers):
        raise BenchError("need at least one publisher or subscriber")
    # alone (the `sub` command), each subscriber waits for `count` messages
    expected_each = pub.count * (1 if spec.pairs else max(1, spec.publishers))
    sub_spec = SubSpec(
        host=pub.host,
        port=pub.port if spec.sub_port is None else spec.sub_port,
        topic=pub.topic,
        qos=pub.qos,
        size=pub.size,
        expected=expected_each,
        # subscribers outlive the publishers' deadline a little to drain the broker
        duration=pub.duration + spec.idle,
        idle=spec.idle,
        coalesce=spec.coalesce,
        keepalive=pub.keepalive,
        connect_timeout=pub.connect_timeout,
        pairs=bool(spec.pairs),
        source_ports=spec.sub_source_ports,
        persistent=spec.persistent,
    )
    sub_procs = spec.sub_procs or usable_cpus()
    group = WorkerGroup()
    try:
        sub_names = []
        for n, indices in enumerate(split(spec.subscribers, sub_procs) if spec.subscribers else []):
            name = f"subscribers-{n}"
            group.start(name, _sub_job(sub_spec, indices))
            sub_names.append(name)
        group.wait_ready(sub_names, pub.connect_timeout * max(1, spec.subscribers))
        if spec.settle and sub_names:
            time.sleep(spec.settle)
        pub_names = []
        for i in range(spec.publishers):
            name = f"publisher-{i}"
            mine = dataclasses.replace(pub, topic=topic_of(pub.topic, i)) if spec.pairs else pub
            group.start(name, _pub_job(mine, i))
            pub_names.append(name)
        group.wait_ready(pub_names, pub.connect_timeout * max(1, spec.publishers))
        group.release()
        done = group.wait_done(pub.duration + spec.idle + 30.0)
    finally:
        group.stop()
    pubs = [done[n] for n in pub_names]
    subs = [done[n] for n in sub_names]
    return summarise(spec, pubs, subs)


def _rate(count: int, start_ns: int, end_ns: int) -> float:
    return count * 1e9 / (end_ns - start_ns) if end_ns > start_ns else 0.0


def summarise(
    spec: ThroughputSpec, pubs: list[dict[str, Any]], subs: list[dict[str, Any]]
) -> dict[str, Any]:
    """Fold the workers' results into one report."""
    pub = spec.pub
    sent = sum(p["sent"] for p in pubs)
    acked = sum(p["acked"] for p in pubs)
    received = sum(s["received"] for s in subs)
    pub_start = min((p["start_ns"] for p in pubs), default=0)
    pub_end = max((p["end_ns"] for p in pubs), default=0)
    sub_first = min((s["first_ns"] for s in subs if s["first_ns"]), default=0)
    sub_last = max((s["last_ns"] for s in subs), default=0)
    start = pub_start or sub_first
    result: dict[str, Any] = {
        "qos": pub.qos,
        "size": pub.size,
        "publishers": spec.publishers,
        "subscribers": spec.subscribers,
        "pairs": spec.pairs,
        "count": pub.count,
        "sent": sent,
        "acked": acked,
        "publish_msgs_per_sec": round(_rate(sent, pub_start, pub_end), 1),
        "publish_stopped": sorted({p["stopped"] for p in pubs}),
    }
    if subs:
        expected = (sent if spec.pairs else sent * spec.subscribers) if pubs else 0
        seconds = (sub_last - start) / 1e9 if sub_last > start else 0.0
        result.update(
            received=received,
            expected=expected,
            lost=max(0, expected - received) if pubs else None,
            min_per_subscriber=min(s["min_per_sub"] for s in subs),
            max_per_subscriber=max(s["max_per_sub"] for s in subs),
            seconds=round(seconds, 4),
            msgs_per_sec=round(_rate(received, start, sub_last), 1),
            mbytes_per_sec=round(_rate(received * pub.size, start, sub_last) / 1e6, 2),
            receive_stopped=sorted({s["stopped"] for s in subs}),
        )
    else:
        result.update(
            seconds=round((pub_end - pub_start) / 1e9, 4),
            msgs_per_sec=result["publish_msgs_per_sec"],
        )
    return result
