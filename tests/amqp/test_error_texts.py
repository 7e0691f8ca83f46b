"""Malformed AMQP gets the protocol's own error and a human sentence, never Python's.

Raw frames over a real socket: a truncated connection.start-ok and a content
header too short for its property flags.  The node answers Connection.Close
with 502 SYNTAX_ERROR and a sentence naming what was malformed; the decoder's
detail (struct and index errors) goes only to the log.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

TIMEOUT = 10.0

PYTHON_WORDS = ("unpack", "index out of range", "struct", "Error", "Traceback", "requires a buffer")


def _frame(kind: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + b"\xce"


def _readFrame(s: socket.socket) -> tuple[int, bytes]:
    head = b""
    while len(head) < 7:
        chunk = s.recv(7 - len(head))
        assert chunk, "connection closed before a frame"
        head += chunk
    kind, _channel, size = struct.unpack(">BHI", head)
    body = b""
    while len(body) < size + 1:
        chunk = s.recv(size + 1 - len(body))
        assert chunk
        body += chunk
    return kind, body[:-1]


def _close(s: socket.socket) -> tuple[int, str]:
    """Read frames until Connection.Close; its reply code and text."""
    while True:
        kind, payload = _readFrame(s)
        classId, methodId = struct.unpack(">HH", payload[:4])
        if (classId, methodId) == (10, 50):
            code = struct.unpack(">H", payload[4:6])[0]
            n = payload[6]
            return code, payload[7 : 7 + n].decode()


def test_truncatedMethodGetsASentence(amqpNode: Any) -> None:
    with socket.create_connection(("127.0.0.1", amqpNode.amqpPort), timeout=TIMEOUT) as s:
        s.sendall(b"AMQP\x00\x00\x09\x01")
        _readFrame(s)  # Connection.Start
        # connection.start-ok whose client-properties table claims 1000 bytes it lacks
        s.sendall(_frame(1, 0, struct.pack(">HHI", 10, 11, 1000) + b"\x01\x02"))
        code, text = _close(s)
    assert code == 502
    assert text == "SYNTAX_ERROR - malformed connection.start_ok method"
    assert not any(w in text for w in PYTHON_WORDS), text
    assert "SYNTAX_ERROR - malformed connection.start_ok method (" in amqpNode.process.output()
