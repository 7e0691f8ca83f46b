"""Walking MQTT fixed headers over a big receive buffer, fast.

A benchmark stream is almost entirely packets of one shape (same topic, same
payload size, same QoS), so :class:`RecordCounter` first checks the framing of
a whole buffer at once: the header bytes must sit at every multiple of the
packet size.  When they do, the packets are counted (and their ids gathered)
with a few C-level slice operations.  When they do not (a SUBACK, a PINGRESP,
a split between reads), it falls back to parsing fixed header by fixed header
on the same buffer, which realigns the stream for the next read.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

from ._mqtt_wire import PUBLISH, decode_remaining_length

DEFAULT_CAPACITY = 1 << 20


def iter_packets(buf: bytearray, end: int) -> Iterator[tuple[int, int, int]]:
    """Yield ``(first_byte, body_start, body_end)`` for each complete packet in ``buf[:end]``.

    Stops at the first incomplete packet; the caller learns how far it got
    from the last ``body_end`` yielded.
    """
    pos = 0
    while pos < end:
        decoded = decode_remaining_length(buf, pos + 1, end)
        if decoded is None:
            return
        length, used = decoded
        body_start = pos + 1 + used
        body_end = body_start + length
        if body_end > end:
            return
        yield buf[pos], body_start, body_end
        pos = body_end


class RecordCounter:
    """Counts packets of one kind in a TCP byte stream and collects their ids.

    ``header`` is the exact fixed header expected (for example a QoS 1 PUBLISH
    header or ``40 02`` for PUBACK), ``size`` the full packet size and
    ``id_offset`` where a packet id sits inside the packet (``None`` when the
    caller needs no ids).  Packets of other kinds are counted in ``others``.
    """

    __slots__ = ("_buf", "_view", "_fill", "_header", "_kind", "_size", "_id_offset", "others")

    def __init__(
        self,
        header: bytes,
        size: int,
        id_offset: int | None = None,
        capacity: int = DEFAULT_CAPACITY,
    ) -> None:
        capacity = max(capacity, 4 * size)
        self._buf = bytearray(capacity)
        self._view = memoryview(self._buf)
        self._fill = 0
        self._header = header
        self._kind = header[0] & 0xF0
        self._size = size
        self._id_offset = id_offset
        self.others = 0

    def recv_from(self, sock: socket.socket) -> int:
        """Read once from ``sock`` into the free part of the buffer; 0 means EOF."""
        if self._fill == len(self._buf):
            raise ValueError("a packet larger than the receive buffer arrived")
        n = sock.recv_into(self._view[self._fill :])
        self._fill += n
        return n

    def feed(self, data: bytes) -> None:
        """Append bytes (for tests and for data read elsewhere)."""
        end = self._fill + len(data)
        if end > len(self._buf):
            raise ValueError("buffer overflow")
        self._buf[self._fill : end] = data
        self._fill = end

    def scan(self) -> tuple[int, bytearray]:
        """Consume every complete packet buffered so far.

        Returns the number of packets of the expected kind and their packet
        ids as big-endian pairs (empty unless ``id_offset`` was given).
        """
        buf, end, size = self._buf, self._fill, self._size
        whole = end // size
        stop = whole * size
        if whole and self._aligned(whole, stop):
            ids = bytearray()
            if self._id_offset is not None:
                at = self._id_offset
                ids = bytearray(2 * whole)
                ids[0::2] = buf[at:stop:size]
                ids[1::2] = buf[at + 1 : stop : size]
            self._keep_from(stop)
            return whole, ids
        return self._scan_slowly()

    def _aligned(self, whole: int, stop: int) -> bool:
        buf, size = self._buf, self._size
        for i, byte in enumerate(self._header):
            if buf[i:stop:size].count(byte) != whole:
                return False
        return True

    def _scan_slowly(self) -> tuple[int, bytearray]:
        buf, kind, want_ids = self._buf, self._kind, self._id_offset is not None
        count = 0
        consumed = 0
        ids = bytearray()
        for first, body_start, body_end in iter_packets(buf, self._fill):
            consumed = body_end
            if first & 0xF0 != kind:
                self.others += 1
                continue
            count += 1
            if want_ids:
                if kind == PUBLISH:
                    if not first & 0x06:  # QoS 0 delivery: nothing to acknowledge
                        continue
                    topic_len = (buf[body_start] << 8) | buf[body_start + 1]
                    at = body_start + 2 + topic_len
                else:
                    at = body_start
                ids += buf[at : at + 2]
        self._keep_from(consumed)
        return count, ids

    def _keep_from(self, pos: int) -> None:
        left = self._fill - pos
        if left and pos:
            self._buf[:left] = bytes(self._view[pos : self._fill])  # copy: regions may overlap
        self._fill = left
