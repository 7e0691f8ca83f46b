"""robustmq.core.timers.TimerHeap: many deadlines on one reactor timer, exact timing."""

from __future__ import annotations

from twisted.internet.task import Clock

from robustmq.core.timers import TimerHeap


def test_callsRunAtTheirTimeInOrderOnOneReactorTimer() -> None:
    clock = Clock()
    heap = TimerHeap(clock)
    ran: list[str] = []
    heap.callLater(3.0, lambda: ran.append("c"))
    heap.callLater(1.0, lambda: ran.append("a"))
    heap.callLater(2.0, lambda: ran.append("b"))
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(0.999)
    assert ran == []
    clock.advance(0.001)
    assert ran == ["a"]
    clock.advance(2.0)
    assert ran == ["a", "b", "c"]
    assert clock.getDelayedCalls() == [] and len(heap) == 0


def test_cancelledTimersDoNotRunAndAnEarlierOneRearms() -> None:
    clock = Clock()
    heap = TimerHeap(clock)
    ran: list[int] = []
    late = heap.callLater(10.0, lambda: ran.append(10))
    assert late.active() and late.getTime() == 10.0
    heap.callLater(5.0, lambda: ran.append(5))
    late.cancel()
    late.cancel()  # idempotent
    assert not late.active()
    clock.advance(5.0)
    assert ran == [5]
    clock.advance(10.0)
    assert ran == [5]
    assert clock.getDelayedCalls() == []


def test_aCallMayScheduleTheNextOne() -> None:
    clock = Clock()
    heap = TimerHeap(clock)
    ran: list[float] = []

    def tick() -> None:
        ran.append(clock.seconds())
        if len(ran) < 3:
            heap.callLater(1.5, tick)

    heap.callLater(1.5, tick)
    clock.pump([0.5] * 12)
    assert ran == [1.5, 3.0, 4.5]


def test_manyCancellationsKeepTheHeapBounded() -> None:
    clock = Clock()
    heap = TimerHeap(clock)
    timers = [heap.callLater(100.0 + i, lambda: None) for i in range(1000)]
    for timer in timers[:900]:
        timer.cancel()
    assert len(heap) == 100
    assert len(heap._heap) <= 2 * 100 + 64
    ran: list[int] = []
    heap.callLater(50.0, lambda: ran.append(1))
    clock.advance(2000)
    assert ran == [1] and len(heap) == 0
