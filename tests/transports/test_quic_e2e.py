"""MQTT over QUIC with robustmq.testing.quicclient: QoS 0/1/2, retained, will, migration, hostile UDP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from transport_support import Certs, Node

from robustmq.testing.quicclient import QuicClient
from robustmq.testing.rawclient import ConnectionClosed, RawClient


def _client(node: Node, certs: Certs) -> QuicClient:
    return QuicClient(node.ports["quic"], cafile=certs.ca, serverName="localhost")


def test_qos012SubscribePublish(node: Node, certs: Certs, uniq: str) -> None:
    with _client(node, certs) as sub, _client(node, certs) as pub:
        assert sub.connect(f"{uniq}-s").returnCode == 0
        assert pub.connect(f"{uniq}-p").returnCode == 0
        assert sub.subscribe([(f"{uniq}/#", 2)]).returnCodes == [2]
        for qos in (0, 1, 2):
            pub.publish(f"{uniq}/q{qos}", b"over quic %d" % qos, qos)
        got = []
        for _ in range(3):
            packet = sub.expectPublish()
            got.append((packet.topic, packet.payload, packet.qos))
            if packet.qos:
                sub.ack(packet)
        assert sorted(got) == [(f"{uniq}/q{q}", b"over quic %d" % q, q) for q in (0, 1, 2)]
        sub.disconnect()
        pub.disconnect()
    assert "listening for mqtt over quic" in node.output()
    assert f"client {uniq}-s connected from 127.0.0.1:" in node.output()
    assert "on quic" in node.output()


def test_crossTransportRetainedAndWill(node: Node, certs: Certs, uniq: str) -> None:
    """Retained messages reach a QUIC subscriber; a QUIC client's will reaches a TCP one."""
    with RawClient(node.tcp) as tcp:
        assert tcp.connect(f"{uniq}-tcp").returnCode == 0
        tcp.publish(f"{uniq}/r", b"retained", 1, retain=True)
        tcp.subscribe([(f"{uniq}/will", 1)])
        with _client(node, certs) as q:
            assert (
                q.connect(
                    f"{uniq}-q", willTopic=f"{uniq}/will", willPayload=b"bye", willQos=1
                ).returnCode
                == 0
            )
            q.subscribe([(f"{uniq}/r", 1)])
            retained = q.expectPublish()
            assert (retained.payload, retained.retain) == (b"retained", True)
            q.ack(retained)
            # Close the QUIC connection without an MQTT DISCONNECT: the will goes out.
        will = tcp.expectPublish()
        assert (will.topic, will.payload) == (f"{uniq}/will", b"bye")
        tcp.ack(will)
        tcp.publish(f"{uniq}/r", b"", 1, retain=True)


def test_connectionMigration(node: Node, certs: Certs, uniq: str) -> None:
    """The client moves to a new UDP port mid-session; replies follow it."""
    with _client(node, certs) as sub, _client(node, certs) as mover:
        assert sub.connect(f"{uniq}-s").returnCode == 0
        assert mover.connect(f"{uniq}-m").returnCode == 0
        mover.subscribe([(f"{uniq}/back", 1)])
        sub.subscribe([(f"{uniq}/t", 1)])
        before = mover.localPort
        mover.migrate()
        assert mover.localPort != before
        mover.publish(f"{uniq}/t", b"from the new address", 1)  # PUBACK reaches the new port
        packet = sub.expectPublish()
        assert packet.payload == b"from the new address"
        sub.ack(packet)
        sub.publish(f"{uniq}/back", b"to the new address", 1)
        packet = mover.expectPublish()
        assert packet.payload == b"to the new address"
        mover.ack(packet)


def test_manyConnectionsAtOnce(node: Node, certs: Certs, uniq: str) -> None:
    clients = [_client(node, certs) for _ in range(25)]
    try:
        for i, c in enumerate(clients):
            assert c.connect(f"{uniq}-{i}").returnCode == 0
            c.subscribe([(f"{uniq}/all", 1)])
        clients[0].publish(f"{uniq}/all", b"fan-out", 1)
        for c in clients:
            packet = c.expectPublish()
            assert packet.payload == b"fan-out"
            c.ack(packet)
    finally:
        for c in clients:
            c.close()


def test_wrongALPNRefused(node: Node, certs: Certs) -> None:
    with pytest.raises((TimeoutError, ConnectionClosed)):
        QuicClient(
            node.ports["quic"], cafile=certs.ca, serverName="localhost", alpn="h3", timeout=2.0
        )


def test_randomDatagramsLeaveOthersServed(node: Node, certs: Certs, uniq: str) -> None:
    """Junk, truncated headers, fake Initials and unknown versions on the QUIC port."""
    with _client(node, certs) as good:
        assert good.connect(f"{uniq}-good").returnCode == 0
        good.subscribe([(f"{uniq}/t", 1)])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as junk:
            target = ("127.0.0.1", node.ports["quic"])
            for i in range(300):
                size = (1, 20, 1200, 1500)[i % 4]
                junk.sendto(os.urandom(size), target)
            # Long-header Initial with random contents, and an unknown version (gets a
            # version negotiation reply, which must not disturb anything).
            junk.sendto(
                b"\xc0\x00\x00\x00\x01\x08" + os.urandom(8) + b"\x08" + os.urandom(1200), target
            )
            junk.sendto(
                b"\xc0\x0a\x0a\x0a\x0a\x08" + os.urandom(8) + b"\x08" + os.urandom(1200), target
            )
        good.publish(f"{uniq}/t", b"still served", 1)
        packet = good.expectPublish()
        assert packet.payload == b"still served"
        good.ack(packet)
    # And a brand-new connection works too.
    with _client(node, certs) as fresh:
        assert fresh.connect(f"{uniq}-fresh").returnCode == 0


def test_idleTimeoutClosesSilentClient(node: Node, certs: Certs, uniq: str) -> None:
    """A client that vanishes is dropped after quic_idle_timeout (3 s here) and its will sent."""
    with RawClient(node.tcp) as tcp:
        assert tcp.connect(f"{uniq}-tcp").returnCode == 0
        tcp.subscribe([(f"{uniq}/will", 1)])
        q = _client(node, certs)
        assert (
            q.connect(
                f"{uniq}-q",
                keepAlive=0,
                willTopic=f"{uniq}/will",
                willPayload=b"timeout",
                willQos=1,
            ).returnCode
            == 0
        )
        q.abort()
        will = tcp.expectPublish(timeout=10.0)
        assert will.payload == b"timeout"
        tcp.ack(will)


def test_commandLineClient(node: Node, certs: Certs, uniq: str) -> None:
    """python -m robustmq.testing.quicclient pub/sub, as the README shows."""
    base = [
        sys.executable,
        "-m",
        "robustmq.testing.quicclient",
        "--port",
        str(node.ports["quic"]),
        "--host",
        "127.0.0.1",
        "--insecure",
    ]
    sub = subprocess.Popen(
        [*base, "sub", f"{uniq}/#", "--qos", "1", "--count", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with RawClient(node.tcp) as tcp:
            assert tcp.connect(f"{uniq}-tcp").returnCode == 0
            tcp.publish(f"{uniq}/cli", b"to the cli", 1, retain=True)
            out, err = sub.communicate(timeout=15)
            assert sub.returncode == 0, err
            assert out.strip() == f"{uniq}/cli to the cli"
            pub = subprocess.run(
                [*base, "pub", f"{uniq}/cli", "", "--qos", "2", "--retain"],
                capture_output=True,
                text=True,
                timeout=15,
            )
            assert pub.returncode == 0, pub.stderr
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
