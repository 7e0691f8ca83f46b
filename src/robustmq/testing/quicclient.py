"""A small blocking MQTT-over-QUIC client, for tests and for trying a QUIC listener.

L{QuicClient} is L{robustmq.testing.rawclient.RawClient} with QUIC under it
instead of TCP: aioquic's sans-IO client connection over one UDP socket, with
ALPN C{mqtt}, and the MQTT session on the first bidirectional stream.  All of
RawClient's helpers work (connect, subscribe, publish with the full QoS 1/2
handshakes, expect, ...), using the broker's own codec::

    with QuicClient(14567, cafile="etc/certs/ca.pem") as c:
        c.connect("sensor-1")
        c.subscribe([("sensors/#", 1)])
        c.publish("sensors/kitchen", b"21.5", qos=1)
        print(c.expectPublish())

It also runs from the shell::

    python -m robustmq.testing.quicclient --port 14567 --cafile etc/certs/ca.pem \\
        pub sensors/kitchen 21.5 --qos 1
    python -m robustmq.testing.quicclient --port 14567 --insecure sub 'sensors/#'
"""

from __future__ import annotations

import argparse
import select
import socket
import ssl
import sys
import time
from collections import deque
from typing import Any

from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from robustmq.protocols.mqtt import MQTTParser
from robustmq.protocols.mqtt._packets import Publish
from robustmq.testing.rawclient import DEFAULT_TIMEOUT, ConnectionClosed, RawClient


class QuicClient(RawClient):
    """One QUIC connection to a broker, spoken to packet by packet (see L{RawClient}).

    @param cafile: CA to verify the server certificate with; None with
        C{verify=False} skips verification (self-signed test setups).
    @param serverName: name checked against the certificate (default: C{host}).
    @param sourcePort: local UDP port (0: any), e.g. to test migration.
    """

    def __init__(
        self,
        port: int,
        host: str = "127.0.0.1",
        timeout: float = DEFAULT_TIMEOUT,
        cafile: str | None = None,
        verify: bool = True,
        serverName: str | None = None,
        alpn: str = "mqtt",
        idleTimeout: float = 60.0,
    ) -> None:
        self.timeout = timeout
        self.parser = MQTTParser(server=False)
        self.received: deque[Any] = deque()
        self.closed = False
        self._nextId = 1
        self.address = (host, port)
        configuration = QuicConfiguration(
            is_client=True,
            alpn_protocols=[alpn],
            server_name=serverName or host,
            idle_timeout=idleTimeout,
        )
        if cafile:
            configuration.load_verify_locations(cafile)
        if not verify:
            configuration.verify_mode = ssl.CERT_NONE
        self.quic = QuicConnection(configuration=configuration)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        self.stream = self.quic.get_next_available_stream_id()
        self.closeReason: str | None = None
        self._connected = False
        self.quic.connect(self.address, now=time.monotonic())
        self._transmit()
        deadline = time.monotonic() + timeout
        while not self._connected:
            if not self._read(deadline):
                self.sock.close()
                raise TimeoutError(f"no QUIC handshake with {host}:{port} in {timeout}s")

    @property
    def localPort(self) -> int:
        """The client side's UDP port."""
        return int(self.sock.getsockname()[1])

    def migrate(self) -> None:
        """Move to a new local UDP port, as a phone changing networks does."""
        old = self.sock
        family = old.family
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        old.close()
        self.quic.change_connection_id()
        self.quic.send_ping(1)
        self._transmit()

    def _transmit(self) -> None:
        for data, addr in self.quic.datagrams_to_send(now=time.monotonic()):
            try:
                self.sock.sendto(data, addr)
            except OSError:
                pass

    def close(self) -> None:
        """Close the QUIC connection (no MQTT DISCONNECT) and the socket."""
        if not self.closed:
            self.quic.close()
            self._transmit()
            self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass

    def abort(self) -> None:
        """Vanish without a word: the broker notices by idle timeout only."""
        self.closed = True
        self.sock.close()

    def send(self, data: bytes) -> None:
        """Write raw bytes on the MQTT stream."""
        if self.closed:
            raise ConnectionClosed(self.closeReason or "connection closed")
        self.quic.send_stream_data(self.stream, data)
        self._transmit()

    def _read(self, deadline: float) -> bool:
        """Wait for datagrams (running QUIC timers meanwhile); False only at the deadline.

        @raise ConnectionClosed: the connection or the stream ended.
        """
        while True:
            if self.closed:
                raise ConnectionClosed(self.closeReason or "connection already closed")
            now = time.monotonic()
            remaining = deadline - now
            if remaining <= 0:
                return False
            timerAt = self.quic.get_timer()
            wait = remaining if timerAt is None else max(0.0, min(remaining, timerAt - now))
            ready, _, _ = select.select([self.sock], [], [], wait)
            if ready:
                try:
                    data, addr = self.sock.recvfrom(65536)
                except OSError:
                    continue
                self.quic.receive_datagram(data, addr, now=time.monotonic())
            elif timerAt is not None and time.monotonic() >= timerAt:
                self.quic.handle_timer(now=time.monotonic())
            else:
                continue
            self._handleEvents()
            if self.closed and not self.received:
                raise ConnectionClosed(self.closeReason or "connection closed")
            return True

    def _handleEvents(self) -> None:
        event = self.quic.next_event()
        while event is not None:
            if isinstance(event, events.HandshakeCompleted):
                self._connected = True
            elif isinstance(event, events.StreamDataReceived) and event.stream_id == self.stream:
                if event.data:
                    self.received.extend(self.parser.feed(event.data))
                if event.end_stream:
                    self.closeReason = "the broker finished the stream"
                    self.closed = True
            elif isinstance(event, events.ConnectionTerminated):
                self.closeReason = (
                    f"QUIC connection closed (error {event.error_code}: {event.reason_phrase})"
                )
                self.closed = True
            event = self.quic.next_event()
        if not self.closed:
            self._transmit()


def main(argv: list[str] | None = None) -> int:
    """Publish or subscribe over QUIC from the shell."""
    parser = argparse.ArgumentParser(
        prog="python -m robustmq.testing.quicclient", description="MQTT over QUIC client"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=14567)
    parser.add_argument("--cafile", help="CA certificate to verify the broker with")
    parser.add_argument("--insecure", action="store_true", help="do not verify the certificate")
    parser.add_argument("--id", default="", help="client id (default: assigned by the broker)")
    sub = parser.add_subparsers(dest="command", required=True)
    pub = sub.add_parser("pub", help="publish one message")
    pub.add_argument("topic")
    pub.add_argument("message")
    pub.add_argument("--qos", type=int, default=0, choices=(0, 1, 2))
    pub.add_argument("--retain", action="store_true")
    subs = sub.add_parser("sub", help="print messages until interrupted (or --count)")
    subs.add_argument("topic")
    subs.add_argument("--qos", type=int, default=0, choices=(0, 1, 2))
    subs.add_argument("--count", type=int, default=0, help="stop after this many messages")
    args = parser.parse_args(argv)
    with QuicClient(args.port, args.host, cafile=args.cafile, verify=not args.insecure) as c:
        connack = c.connect(args.id)
        if connack.returnCode != 0:
            print(f"refused: CONNACK {connack.returnCode}", file=sys.stderr)
            return 1
        if args.command == "pub":
            c.publish(args.topic, args.message.encode(), args.qos, args.retain)
            c.disconnect()
            return 0
        c.subscribe([(args.topic, args.qos)])
        seen = 0
        while not args.count or seen < args.count:
            try:
                packet = c.receive(timeout=30.0)
            except TimeoutError:
                c.ping()
                continue
            if isinstance(packet, Publish):
                if packet.qos:
                    c.ack(packet)
                print(packet.topic, packet.payload.decode(errors="replace"), flush=True)
                seen += 1
        c.disconnect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
