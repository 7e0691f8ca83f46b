"""Fixtures for the transport tests: test certificates and one node with every transport.

The shared node (C{node}) listens for MQTT on 127.0.0.1 over tcp, tls, mutual
TLS (client certificate CN as username), ws, wss and quic, each on a free
port.  Tests use their own topics and client ids (C{uniq}).  Tests that send
SIGHUP or need other settings start their own node.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from robustmq.testing.process import BrokerProcess, freePort
from robustmq.transports.testcerts import generateTestCertificates

#: Seconds any single awaited event may take before the test fails.
TIMEOUT = 5.0


def freeUdpPort(host: str = "127.0.0.1") -> int:
    """A UDP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Certs:
    """Paths of a test CA, server and client certificate, plus a client of another CA."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        paths = generateTestCertificates(directory / "good", clientName="alice")
        self.ca = str(paths["ca"])
        self.server = str(paths["server"])
        self.serverKey = str(paths["server_key"])
        self.client = str(paths["client"])
        self.clientKey = str(paths["client_key"])
        rogue = generateTestCertificates(directory / "rogue", clientName="mallory")
        self.rogueCa = str(rogue["ca"])
        self.rogueClient = str(rogue["client"])
        self.rogueClientKey = str(rogue["client_key"])


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs(tmp_path_factory.mktemp("certs"))


def listenersConfig(certs: Certs, ports: dict[str, int], **extra: Any) -> str:
    """[[listeners]] tables for tls, mtls, ws, wss and quic on the given ports."""
    tls = f'certfile = "{certs.server}"\nkeyfile = "{certs.serverKey}"'
    more = "\n".join(f"{k} = {v}" for k, v in extra.items())
    tables = {
        "tls": f'transport = "tls"\n{tls}',
        "mtls": f'transport = "tls"\n{tls}\ncacertfile = "{certs.ca}"\nverify_peer = true\n'
        'peer_cert_as_username = "cn"',
        "ws": 'transport = "ws"',
        "wss": f'transport = "wss"\n{tls}',
        "quic": f'transport = "quic"\n{tls}\n{more}',
    }
    return "\n".join(
        f'[[listeners]]\nprotocol = "mqtt"\nbind = "127.0.0.1"\nport = {ports[name]}\n'
        f'name = "{name}"\n{body}\n'
        for name, body in tables.items()
        if name in ports
    )


class Node:
    """A running BrokerProcess and the port of each of its transports."""

    def __init__(self, process: BrokerProcess, ports: dict[str, int]) -> None:
        self.process = process
        self.ports = ports
        self.tcp = process.port

    def output(self) -> str:
        return self.process.output()


def startNode(certs: Certs, extra: str = "", **quic: Any) -> Node:
    ports = {
        "tls": freePort(),
        "mtls": freePort(),
        "ws": freePort(),
        "wss": freePort(),
        "quic": freeUdpPort(),
    }
    process = BrokerProcess(listenersConfig(certs, ports, **quic) + "\n" + extra)
    process.start()
    return Node(process, ports)


@pytest.fixture(scope="session")
def node(certs: Certs) -> Iterator[Node]:
    """One node with every transport, for the whole session."""
    n = startNode(certs, quic_idle_timeout=3.0)
    try:
        yield n
        # Hostile input and abrupt clients must never reach an unhandled error.
        output = n.output()
        for marker in ("Traceback (most recent call last)", "Unhandled Error", "Unhandled error"):
            assert marker not in output, output[output.index(marker) - 2000 :][:6000]
    finally:
        n.process.cleanup()


@pytest.fixture
def uniq(request: pytest.FixtureRequest) -> str:
    """A short prefix unique to this test, for topics and client ids."""
    name = "".join(c if c.isalnum() else "-" for c in request.node.name)[-30:]
    return f"{name}-{uuid.uuid4().hex[:8]}"


# mosquitto command-line clients


def mosquitto(
    tool: str, port: int, *args: str, timeout: float = 10.0
) -> subprocess.CompletedProcess[str]:
    """Run mosquitto_pub or mosquitto_sub against 127.0.0.1:port and wait for it."""
    return subprocess.run(
        [tool, "-h", "localhost", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def startSubscriber(port: int, *args: str) -> subprocess.Popen[str]:
    """A mosquitto_sub in the background (pass -C/-W so it ends by itself)."""
    return subprocess.Popen(
        ["mosquitto_sub", "-h", "localhost", "-p", str(port), "-v", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# A raw WebSocket client: exactly the frames a test chooses


class RawWebSocket:
    """A blocking WebSocket client over a plain socket, frame by frame (client frames masked)."""

    def __init__(
        self,
        port: int,
        path: str = "/mqtt",
        subprotocols: tuple[str, ...] | None = ("mqtt",),
        rcvbuf: int | None = None,
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if subprotocols:
            lines.append(f"Sec-WebSocket-Protocol: {', '.join(subprotocols)}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        self.response = head.decode(errors="replace")
        self.status = int(self.response.split(" ", 2)[1]) if self.response else 0

    def header(self, name: str) -> str | None:
        for line in self.response.split("\r\n")[1:]:
            k, _, v = line.partition(":")
            if k.strip().lower() == name.lower():
                return v.strip()
        return None

    def sendFrame(self, payload: bytes, opcode: int = 2, fin: bool = True) -> None:
        """Send one masked frame (opcode 2 binary, 1 text, 0 continuation)."""
        first = (0x80 if fin else 0) | opcode
        n = len(payload)
        if n < 126:
            header = bytes([first, 0x80 | n])
        elif n < 65536:
            header = bytes([first, 0x80 | 126]) + n.to_bytes(2, "big")
        else:
            header = bytes([first, 0x80 | 127]) + n.to_bytes(8, "big")
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def _need(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the server")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def recvFrame(self) -> tuple[int, bytes]:
        """The next frame from the server: (opcode, payload)."""
        b0, b1 = self._need(2)
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(self._need(2), "big")
        elif n == 127:
            n = int.from_bytes(self._need(8), "big")
        return b0 & 0x0F, self._need(n)

    def close(self) -> None:
        self.sock.close()
