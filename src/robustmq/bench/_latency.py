"""End-to-end latency: one paced publisher, one subscriber, timestamps in the payload.

The publisher (this process) stamps each payload with ``time.perf_counter_ns()``
just before writing it; the subscriber (a child process on the same host, so
the same monotonic clock) subtracts that from the time its read returned.
Sending is paced with sleeps, never busy waits, so that on a shared core the
publisher does not steal time from the subscriber it is measuring.
"""

from __future__ import annotations

import multiprocessing.synchronize
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import _mqtt_wire as wire
from ._client import BenchError, disconnect, open_session, subscribe
from ._framing import RecordCounter, iter_packets
from ._report import latency_summary
from ._workers import WorkerGroup

_STAMP = struct.Struct("!Q")
GO_TIMEOUT = 120.0


@dataclass(frozen=True, slots=True)
class LatencySpec:
    """One latency run."""

    host: str
    port: int
    topic: str
    qos: int
    size: int
    rate: float
    count: int
    duration: float
    idle: float = 3.0
    keepalive: int = 60
    connect_timeout: float = 10.0
    sub_port: int | None = None  # None: the publisher's port (another broker of a cluster)
    settle: float = 0.0  # seconds from the subscriber's SUBACK to the first message
    pub_source_port: int = 0  # fixed local ports (0: any), see open_session
    sub_source_port: int = 0


def _receive_stamps(sock: socket.socket, spec: LatencySpec) -> list[int]:
    """Read PUBLISHes, returning one latency in ns per message received."""
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    fill = 0
    latencies: list[int] = []
    deadline = time.monotonic() + spec.duration + spec.idle
    last_data = None
    unpack = _STAMP.unpack_from
    while len(latencies) < spec.count:
        now = time.monotonic()
        if now >= deadline or (last_data is not None and now - last_data >= spec.idle):
            break
        sock.settimeout(min(0.25, deadline - now))
        try:
            n = sock.recv_into(view[fill:])
        except TimeoutError:
            continue
        arrived = time.perf_counter_ns()
        if not n:
            raise BenchError("the broker closed the latency subscriber's connection")
        # ACK at once: a delayed ACK would hold the broker's next write behind
        # Nagle's algorithm (brokers without TCP_NODELAY) for up to 40 ms.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        last_data = time.monotonic()
        fill += n
        consumed = 0
        acks = bytearray()
        for first, body_start, body_end in iter_packets(buf, fill):
            consumed = body_end
            if first & 0xF0 != wire.PUBLISH:
                continue
            at = body_start + 2 + ((buf[body_start] << 8) | buf[body_start + 1])
            if first & 0x06:
                acks += buf[at : at + 2]
                at += 2
            if body_end - at >= _STAMP.size:
                latencies.append(arrived - unpack(buf, at)[0])
        if acks:
            sock.sendall(wire.pubacks(acks))
        if consumed:
            buf[: fill - consumed] = bytes(view[consumed:fill])
            fill -= consumed
    return latencies


def _sub_job(spec: LatencySpec) -> Callable[..., dict[str, Any]]:
    def job(ready: Callable[[], None], go: multiprocessing.synchronize.Event) -> dict[str, Any]:
        port = spec.port if spec.sub_port is None else spec.sub_port
        sock = open_session(
            spec.host,
            port,
            "bench-lat-sub",
            spec.keepalive,
            spec.connect_timeout,
            spec.sub_source_port,
        )
        try:
            subscribe(sock, spec.topic, spec.qos, spec.connect_timeout)
            ready()
            if not go.wait(GO_TIMEOUT):
                raise BenchError("never released")
            latencies = _receive_stamps(sock, spec)
        finally:
            disconnect(sock)
        return {"received": len(latencies), **latency_summary(latencies)}

    return job


def _publish_paced(sock: socket.socket, spec: LatencySpec) -> dict[str, Any]:
    """Send ``spec.count`` stamped messages at ``spec.rate`` msg/s."""
    layout = wire.PublishLayout(spec.topic.encode(), spec.size, spec.qos)
    packet = bytearray(layout.encode(wire.bench_payload(spec.size), 1))
    stamp_at = layout.payload_offset
    pid_at = layout.packet_id_offset if spec.qos else 0
    acks = RecordCounter(bytes((wire.PUBACK, 2)), 4)
    interval = 1e9 / spec.rate
    deadline = time.monotonic() + spec.duration
    sent = acked = 0
    sock.settimeout(5.0)
    start = time.perf_counter_ns()
    while sent < spec.count and time.monotonic() < deadline:
        delay = start + int(sent * interval) - time.perf_counter_ns()
        if delay > 0:
            time.sleep(delay / 1e9)
        if spec.qos:
            struct.pack_into("!H", packet, pid_at, sent % 65535 + 1)
        _STAMP.pack_into(packet, stamp_at, time.perf_counter_ns())
        sock.sendall(packet)
        sent += 1
        if spec.qos:
            acked += _drain_acks(sock, acks)
    end = time.perf_counter_ns()
    ack_deadline = time.monotonic() + spec.idle
    while spec.qos and acked < sent and time.monotonic() < ack_deadline:
        sock.settimeout(0.25)
        try:
            if not acks.recv_from(sock):
                break
        except TimeoutError:
            continue
        acked += acks.scan()[0]
    return {"sent": sent, "acked": acked, "send_rate": round(sent * 1e9 / max(1, end - start), 1)}


def _drain_acks(sock: socket.socket, acks: RecordCounter) -> int:
    """Read whatever PUBACKs are already here, without waiting."""
    sock.setblocking(False)
    try:
        acks.recv_from(sock)
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(5.0)
    return acks.scan()[0]


def run(spec: LatencySpec) -> dict[str, Any]:
    """Measure latency percentiles at a fixed publish rate."""
    if spec.size < _STAMP.size:
        raise BenchError(f"latency payloads carry an {_STAMP.size}-byte timestamp: --size >= 8")
    if spec.rate <= 0:
        raise BenchError("--rate must be positive")
    group = WorkerGroup()
    try:
        group.start("latency-subscriber", _sub_job(spec))
        group.wait_ready(["latency-subscriber"], spec.connect_timeout)
        if spec.settle:
            time.sleep(spec.settle)
        sock = open_session(
            spec.host,
            spec.port,
            "bench-lat-pub",
            spec.keepalive,
            spec.connect_timeout,
            spec.pub_source_port,
        )
        try:
            group.release()
            pub = _publish_paced(sock, spec)
        finally:
            disconnect(sock)
        sub = group.wait_done(spec.idle + 30.0)["latency-subscriber"]
    finally:
        group.stop()
    return {
        "qos": spec.qos,
        "size": spec.size,
        "rate": spec.rate,
        "count": spec.count,
        **pub,
        **sub,
        "lost": max(0, pub["sent"] - sub["received"]),
    }
