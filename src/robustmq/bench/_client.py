"""Opening one benchmark MQTT session over a blocking loopback socket.

Handshakes (CONNECT/CONNACK, SUBSCRIBE/SUBACK) are read with exact-size
reads so that nothing after them is consumed: the first PUBLISH a
subscriber gets stays in the kernel for the fast receive loop.
"""

from __future__ import annotations

import socket
import struct
import time

from . import _mqtt_wire as wire

LOOPBACK = ("127.0.0.1", "::1", "localhost")


class BenchError(Exception):
    """A benchmark could not run as asked (refused connection, broker said no, timeout)."""


def check_loopback(host: str) -> None:
    """Refuse to aim the load generator at anything but this machine."""
    if host not in LOOPBACK and not host.startswith("127."):
        raise BenchError(f"refusing to benchmark {host!r}: the load generator is loopback only")


def recv_exact(sock: socket.socket, size: int, deadline: float) -> bytes:
    """Read exactly ``size`` bytes before ``deadline`` (a ``time.monotonic()`` value)."""
    chunks = bytearray()
    while len(chunks) < size:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BenchError("timed out waiting for the broker")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(size - len(chunks))
        except TimeoutError:
            raise BenchError("timed out waiting for the broker") from None
        if not chunk:
            raise BenchError("the broker closed the connection")
        chunks += chunk
    return bytes(chunks)


def open_session(
    host: str,
    port: int,
    client_id: str,
    keepalive: int = 60,
    timeout: float = 10.0,
    source_port: int = 0,
    clean: bool = True,
) -> socket.socket:
    """Connect, send CONNECT (clean session unless C{clean} is false) and wait for a
    successful CONNACK.

    ``source_port`` fixes the connection's local port (0: any): a node with
    several worker processes picks the worker by a hash of the connection's
    addresses, so a fixed source port lands on a known worker.
    """
    deadline = time.monotonic() + timeout
    source = ("127.0.0.1", fix_source_port(source_port)) if source_port else None
    try:
        sock = socket.create_connection((host, port), timeout=timeout, source_address=source)
    except OSError as exc:
        raise BenchError(f"cannot connect to {host}:{port}: {exc}") from exc
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(wire.connect(client_id, keepalive, clean))
        read_connack(sock, deadline)
    except BaseException:
        sock.close()
        raise
    return sock


def read_connack(sock: socket.socket, deadline: float) -> None:
    """Read a CONNACK and raise unless it accepts the connection (MQTT 3.2.2.3)."""
    ack = recv_exact(sock, 4, deadline)
    if ack[0] != wire.CONNACK or ack[1] != 2:
        raise BenchError(f"expected CONNACK, got {ack.hex()}")
    if ack[3] != 0:
        raise BenchError(f"broker refused the connection, return code {ack[3]}")


def subscribe(sock: socket.socket, topic: str, qos: int, timeout: float = 10.0) -> None:
    """Subscribe to one topic filter and wait for a SUBACK that grants it."""
    deadline = time.monotonic() + timeout
    sock.sendall(wire.subscribe(1, topic, qos))
    ack = recv_exact(sock, 5, deadline)
    if ack[0] != wire.SUBACK or ack[1] != 3:
        raise BenchError(f"expected SUBACK, got {ack.hex()}")
    if ack[4] == 0x80:
        raise BenchError(f"broker refused the subscription to {topic!r}")
    if ack[4] != qos:
        raise BenchError(f"asked for QoS {qos} on {topic!r}, broker granted {ack[4]}")


def disconnect(sock: socket.socket) -> None:
    """Send DISCONNECT if the socket still takes it, then close it.

    A socket bound to a fixed source port waits for the broker to close the
    connection first (MQTT-3.14.4-1: the server closes after DISCONNECT), so
    that the TIME_WAIT is the broker's and the port is free for the next run
    at once; if the broker does not close within a few seconds, a reset.
    """
    fixed = False
    try:
        fixed = sock.getsockname()[1] in _FIXED_PORTS
        sock.settimeout(1.0)
        sock.sendall(wire.DISCONNECT)
        if fixed:
            _awaitClose(sock, time.monotonic() + 10.0)
    except OSError:
        if fixed:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        sock.close()


def _awaitClose(sock: socket.socket, deadline: float) -> None:
    """Read (and drop) until the peer closes; raise TimeoutError at C{deadline}."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the broker did not close the connection")
        sock.settimeout(remaining)
        if not sock.recv(65536):
            return


#: Source ports chosen by the caller in this process (see L{disconnect}).
_FIXED_PORTS: set[int] = set()


def fix_source_port(port: int) -> int:
    """Remember that ``port`` is a chosen source port; returns it."""
    if port:
        _FIXED_PORTS.add(port)
    return port
