"""The subscriber worker: many subscriptions in one process, counted by stride.

Each connection reads into its own big buffer; a :class:`RecordCounter`
checks the framing of the whole read and counts the PUBLISH packets in it.
At QoS 1 the packet ids of a whole read are turned into one batch of
PUBACKs and written back with a single ``sendall``.
"""

from __future__ import annotations

import selectors
import socket
import time
from dataclasses import dataclass
from typing import Any

from . import _mqtt_wire as wire
from ._client import BenchError, disconnect, open_session, subscribe
from ._framing import RecordCounter

COALESCE_MIN_BYTES = 4096


@dataclass(frozen=True, slots=True)
class SubSpec:
    """What every subscriber of one run does."""

    host: str
    port: int
    topic: str
    qos: int
    size: int
    expected: int  # messages each subscriber waits for; 0 = until deadline or idle
    duration: float
    idle: float = 3.0
    coalesce: float = 0.001  # see receive()
    keepalive: int = 60
    connect_timeout: float = 10.0
    client_prefix: str = "bench-sub"
    #: pair mode: subscriber i subscribes to topic_of(topic, i), not to topic
    pairs: bool = False
    #: subscriber i's source port is source_ports[i] (beyond the tuple: any)
    source_ports: tuple[int, ...] = ()
    #: persistent sessions: the broker holds QoS 1 messages for them durably
    persistent: bool = False

    def topic_for(self, index: int) -> str:
        """The topic subscriber ``index`` subscribes to."""
        return topic_of(self.topic, index) if self.pairs else self.topic


def topic_of(topic: str, index: int) -> str:
    """Pair ``index``'s own topic in pair mode (all of one length: same packet size)."""
    return f"{topic}/{index:04d}"


class _Subscription:
    """One subscriber connection's counters."""

    __slots__ = ("sock", "counter", "received", "first_ns", "last_ns")

    def __init__(self, sock: socket.socket, counter: RecordCounter) -> None:
        self.sock = sock
        self.counter = counter
        self.received = 0
        self.first_ns = 0
        self.last_ns = 0


def connect_subscribers(spec: SubSpec, indices: range) -> list[socket.socket]:
    """Open and subscribe one session per index; close them all if one fails."""
    socks: list[socket.socket] = []
    try:
        for i in indices:
            sock = open_session(
                spec.host,
                spec.port,
                f"{spec.client_prefix}-{i}",
                spec.keepalive,
                spec.connect_timeout,
                spec.source_ports[i] if i < len(spec.source_ports) else 0,
                clean=not spec.persistent,
            )
            socks.append(sock)
            subscribe(sock, spec.topic_for(i), spec.qos, spec.connect_timeout)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def receive(socks: list[socket.socket], spec: SubSpec) -> dict[str, Any]:
    """Count PUBLISHes on subscribed sockets until each has ``spec.expected``, or time runs out.

    Stops early after ``spec.idle`` seconds without any data once traffic has
    started (lost QoS 0 messages never arrive), and always at the deadline.

    Under heavy traffic (the previous wake-up read at least
    ``COALESCE_MIN_BYTES``) the loop sleeps ``spec.coalesce`` seconds after
    each wake-up so that many messages are read per system call.  Waking
    for every second message would cost the broker's core a task wake-up per
    write and cut its throughput by a quarter; a window-limited QoS 1 flow
    reads less than the threshold per wake-up and is never slowed down.
    """
    # In pair mode every subscriber's topic has the same length: one packet shape.
    layout = wire.PublishLayout(spec.topic_for(0).encode(), spec.size, spec.qos)
    id_offset = layout.packet_id_offset if spec.qos else None
    subs = [_Subscription(s, RecordCounter(layout.header, layout.size, id_offset)) for s in socks]
    selector = selectors.DefaultSelector()
    for sub in subs:
        sub.sock.settimeout(5.0)
        selector.register(sub.sock, selectors.EVENT_READ, sub)
    waiting = len(subs)
    started = False
    now = time.monotonic()
    deadline = now + spec.duration
    last_data = now
    next_ping = now + spec.keepalive / 2
    stopped = "count"
    last_round = 0
    try:
        while waiting:
            now = time.monotonic()
            if now >= deadline:
                stopped = "deadline"
                break
            if started and now - last_data >= spec.idle:
                stopped = "idle"
                break
            if now >= next_ping:
                for sub in subs:
                    sub.sock.sendall(wire.PINGREQ)
                next_ping = now + spec.keepalive / 2
            events = selector.select(timeout=min(0.25, deadline - now))
            if not events:
                continue
            stamp = time.perf_counter_ns()
            last_data = time.monotonic()
            started = True
            if spec.coalesce and last_round >= COALESCE_MIN_BYTES:
                time.sleep(spec.coalesce)
            last_round = 0
            for key, _ in events:
                sub = key.data
                n = sub.counter.recv_from(sub.sock)
                if not n:
                    raise BenchError("the broker closed a subscriber's connection")
                last_round += n
                got, ids = sub.counter.scan()
                if ids:
                    sub.sock.sendall(wire.pubacks(ids))
                if got:
                    if not sub.first_ns:
                        sub.first_ns = stamp
                    sub.last_ns = stamp
                    sub.received += got
                    if spec.expected and sub.received >= spec.expected:
                        selector.unregister(sub.sock)
                        waiting -= 1
    finally:
        selector.close()
    firsts = [s.first_ns for s in subs if s.first_ns]
    per_sub = [s.received for s in subs]
    return {
        "received": sum(per_sub),
        "min_per_sub": min(per_sub, default=0),
        "max_per_sub": max(per_sub, default=0),
        "first_ns": min(firsts, default=0),
        "last_ns": max((s.last_ns for s in subs), default=0),
        "stopped": stopped,
    }


def close_subscribers(socks: list[socket.socket]) -> None:
    """End every subscriber session politely."""
    for sock in socks:
        disconnect(sock)
