"""The publisher worker: pushes pre-encoded PUBLISH packets as fast as allowed.

QoS 0 sends one big blob of identical packets per ``sendall``.  QoS 1 sends
consecutive slices of a ring of packets with ids 1..P and keeps at most
``window`` of them unacknowledged, counting PUBACKs by stride.  Every loop is
bounded by the message count and by a hard deadline.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Any

from . import _mqtt_wire as wire
from ._client import BenchError, disconnect, open_session
from ._framing import RecordCounter

SEND_CHUNK_BYTES = 256 * 1024
COALESCE_MIN_ACKS = 64


@dataclass(frozen=True, slots=True)
class PubSpec:
    """What every publisher of one run does."""

    host: str
    port: int
    topic: str
    qos: int
    size: int
    count: int
    duration: float
    window: int = 1000
    rate: float = 0.0
    coalesce: float = 0.0002  # QoS 1: see _publish_qos1()
    keepalive: int = 60
    connect_timeout: float = 10.0
    client_prefix: str = "bench-pub"
    #: publisher i's source port is source_ports[i] (beyond the tuple: any)
    source_ports: tuple[int, ...] = ()

    @property
    def layout(self) -> wire.PublishLayout:
        """The shape of this run's PUBLISH packets."""
        return wire.PublishLayout(self.topic.encode(), self.size, self.qos)


def connect_publisher(spec: PubSpec, index: int) -> socket.socket:
    """Open publisher ``index``'s session."""
    return open_session(
        spec.host,
        spec.port,
        f"{spec.client_prefix}-{index}",
        spec.keepalive,
        spec.connect_timeout,
        spec.source_ports[index] if index < len(spec.source_ports) else 0,
    )


def publish(sock: socket.socket, spec: PubSpec) -> dict[str, Any]:
    """Publish ``spec.count`` messages on a connected session and report what happened.

    The result holds ``sent``, ``acked`` (QoS 1), ``start_ns``/``end_ns``
    (``time.perf_counter_ns``, comparable across processes on one host) and
    ``stopped`` (``"count"`` or why the loop ended early).
    """
    deadline = time.monotonic() + spec.duration
    if spec.qos == 0:
        return _publish_qos0(sock, spec, deadline)
    return _publish_qos1(sock, spec, deadline)


def _pace(start_ns: int, sent: int, rate: float) -> None:
    """Sleep until ``sent`` messages are due at ``rate`` msg/s."""
    due = start_ns + int(sent * 1e9 / rate)
    delay = due - time.perf_counter_ns()
    if delay > 0:
        time.sleep(delay / 1e9)


def _publish_qos0(sock: socket.socket, spec: PubSpec, deadline: float) -> dict[str, Any]:
    layout = spec.layout
    batch = max(1, min(spec.count, SEND_CHUNK_BYTES // layout.size))
    if spec.rate:
        batch = max(1, min(batch, int(spec.rate // 100)))
    blob = memoryview(layout.repeated(wire.bench_payload(spec.size), batch))
    size = layout.size
    sent = 0
    stopped = "count"
    start = time.perf_counter_ns()
    while sent < spec.count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            stopped = "deadline"
            break
        n = min(batch, spec.count - sent)
        sock.settimeout(remaining)
        try:
            sock.sendall(blob if n == batch else blob[: n * size])
        except TimeoutError:
            stopped = "deadline (broker stopped reading)"
            break
        sent += n
        if spec.rate:
            _pace(start, sent, spec.rate)
    end = time.perf_counter_ns()
    return {"sent": sent, "acked": 0, "start_ns": start, "end_ns": end, "stopped": stopped}


def _publish_qos1(sock: socket.socket, spec: PubSpec, deadline: float) -> dict[str, Any]:
    """Keep ``spec.window`` PUBLISHes in flight, sending in bursts of a quarter window.

    While PUBACKs arrive in bulk (the last read held at least
    ``COALESCE_MIN_ACKS``), the loop naps ``spec.coalesce`` seconds before
    reading them so that one read collects many: reading each PUBACK as it
    is written costs the broker a wake-up of this process per message.
    """
    layout = spec.layout
    window = max(1, min(spec.window, 32767))
    ring_len = min(65535, max(2 * window, 1024))
    ring = memoryview(layout.ring(wire.bench_payload(spec.size), ring_len))
    size = layout.size
    acks = RecordCounter(bytes((wire.PUBACK, 2)), 4)
    burst = max(1, window // 4)
    sent = acked = 0
    last_read = 0
    stopped = "count"
    start = time.perf_counter_ns()
    while acked < spec.count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            stopped = "deadline"
            break
        room = min(window - (sent - acked), spec.count - sent)
        if room >= burst or (room > 0 and sent + room == spec.count):
            sock.settimeout(remaining)
            at = sent % ring_len
            first = min(room, ring_len - at)
            try:
                sock.sendall(ring[at * size : (at + first) * size])
                if room > first:
                    sock.sendall(ring[: (room - first) * size])
            except TimeoutError:
                stopped = "deadline (broker stopped reading)"
                break
            sent += room
            if spec.rate:
                _pace(start, sent, spec.rate)
        if spec.coalesce and last_read >= 4 * COALESCE_MIN_ACKS:
            time.sleep(spec.coalesce)
        sock.settimeout(min(remaining, 1.0))
        try:
            last_read = acks.recv_from(sock)
        except TimeoutError:
            continue
        if not last_read:
            raise BenchError("the broker closed the publisher's connection")
        got, _ = acks.scan()
        acked += got
    end = time.perf_counter_ns()
    return {"sent": sent, "acked": acked, "start_ns": start, "end_ns": end, "stopped": stopped}


def close_publisher(sock: socket.socket) -> None:
    """End a publisher's session politely."""
    disconnect(sock)
