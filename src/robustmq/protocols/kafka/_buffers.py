"""The node-wide bound on bytes held for Kafka requests that are not answered yet.

Each connection holds the requests it has read but not yet answered (at
most C{max_pending_requests}) and the one it is still receiving, which
may be up to C{max_request_size}.  L{RequestMemory} adds these up over
every Kafka connection of the node and keeps the total under
C{[kafka] max_buffered_request_bytes} the way Kafka's
C{queued.max.request.bytes} does: connections are served in the order in
which they started holding bytes, and a connection whose holding would
take the total beyond the bound stops being read until the connections
before it have released theirs.  The first holder is always read, so a
request larger than the bound still completes, alone, and nothing can wait
on itself.  At most one read (64 KiB) per paused connection lands beyond
the bound.
"""

from __future__ import annotations

from typing import Any, Protocol


class _Holder(Protocol):
    def memoryPaused(self, paused: bool) -> None: ...


class RequestMemory:
    """Bytes held per connection, in arrival order, against one bound."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        #: connection -> bytes it holds (insertion order = order it began holding)
        self.held: dict[Any, int] = {}
        self.total = 0
        #: connections told to stop reading
        self.paused: set[Any] = set()
        #: how often a connection was paused (metrics and tests)
        self.pauses = 0

    def update(self, conn: _Holder, size: int) -> None:
        """C{conn} now holds C{size} bytes (0: nothing; it leaves the order)."""
        old = self.held.get(conn)
        if size <= 0:
            if old is None:
                return
            del self.held[conn]
            self.total -= old
            if conn in self.paused:
                self.paused.discard(conn)
                conn.memoryPaused(False)
        else:
            self.held[conn] = size
            self.total += size - (old or 0)
        if self.total <= self.limit and not self.paused:
            return  # the common case: under the bound, nothing to re-decide
        self._rebalance()

    def _rebalance(self) -> None:
        running = 0
        first = True
        for conn, size in self.held.items():
            running += size
            allowed = first or running <= self.limit
            first = False
            if allowed and conn in self.paused:
                self.paused.discard(conn)
                conn.memoryPaused(False)
            elif not allowed and conn not in self.paused:
                self.paused.add(conn)
                self.pauses += 1
                conn.memoryPaused(True)


__all__ = ["RequestMemory"]
