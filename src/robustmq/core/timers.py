"""Many long-lived per-connection timers on one reactor timer.

A reactor C{DelayedCall} costs about 700 bytes; every idle MQTT connection
holds one for its keep-alive check.  L{TimerHeap} keeps such deadlines in a
binary heap of small entries and arms a single C{DelayedCall} for the
earliest one, so timing is exactly what C{callLater} would give.  Cancelled
entries are dropped lazily; the heap is rebuilt when more than half of it
is cancelled, which bounds it by twice the live timers.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any


class Timer:
    """One scheduled call (the part of C{IDelayedCall} that connections use)."""

    __slots__ = ("when", "seq", "call", "heap")

    def __init__(self, when: float, seq: int, call: Callable[[], Any], heap: TimerHeap) -> None:
        self.when = when
        self.seq = seq
        self.call: Callable[[], Any] | None = call
        self.heap = heap

    def __lt__(self, other: Timer) -> bool:
        return (self.when, self.seq) < (other.when, other.seq)

    def active(self) -> bool:
        """Not yet run nor cancelled."""
        return self.call is not None

    def cancel(self) -> None:
        """Do not run it (idempotent, unlike C{DelayedCall.cancel})."""
        if self.call is not None:
            self.call = None
            self.heap._cancelled()

    def getTime(self) -> float:
        """When it runs, in reactor seconds."""
        return self.when


class TimerHeap:
    """Deadlines of many connections on one reactor C{DelayedCall} (see the module)."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self._heap: list[Timer] = []
        self._seq = 0
        self._dead = 0
        self._armed: Any = None
        self._firing = False

    def __len__(self) -> int:
        return len(self._heap) - self._dead

    def callLater(self, delay: float, call: Callable[[], Any]) -> Timer:
        """Run C{call} in C{delay} seconds; returns a cancellable L{Timer}."""
        self._seq += 1
        timer = Timer(self.reactor.seconds() + delay, self._seq, call, self)
        heapq.heappush(self._heap, timer)
        if self._heap[0] is timer:
            self._arm()
        return timer

    def _cancelled(self) -> None:
        self._dead += 1
        if not self._firing and self._dead > 64 and self._dead * 2 > len(self._heap):
            self._heap = [t for t in self._heap if t.call is not None]
            heapq.heapify(self._heap)
            self._dead = 0

    def _arm(self) -> None:
        heap = self._heap
        while heap and heap[0].call is None:
            heapq.heappop(heap)
            self._dead -= 1
        armed = self._armed
        if not heap:
            if armed is not None and armed.active():
                armed.cancel()
            self._armed = None
            return
        when = heap[0].when
        if armed is not None and armed.active():
            if armed.getTime() <= when:
                return  # fires first anyway; _fire re-arms
            armed.cancel()
        self._armed = self.reactor.callLater(max(0.0, when - self.reactor.seconds()), self._fire)

    def _fire(self) -> None:
        self._armed = None
        now = self.reactor.seconds()
        heap = self._heap
        self._firing = True
        try:
            while heap and heap[0].when <= now:
                timer = heapq.heappop(heap)
                call, timer.call = timer.call, None
                if call is None:
                    self._dead -= 1
                    continue
                call()
        finally:
            self._firing = False
            self._arm()
