"""L{DropLog}: the first drop at once, then at most one summary per interval."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from robustmq.core.droplog import SUMMARY_INTERVAL, DropLog


class DropLogTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.lines: list[tuple[bool, int, int]] = []
        self.drops = DropLog(
            lambda first, n, total: self.lines.append((first, n, total)),
            self.clock.callLater,
            self.clock.seconds,
        )

    def test_firstDropLoggedAtOnce(self) -> None:
        self.drops.dropped()
        self.assertEqual(self.lines, [(True, 1, 1)])

    def test_laterDropsSummarisedOncePerInterval(self) -> None:
        for _ in range(1000):
            self.drops.dropped()
        self.assertEqual(self.lines, [(True, 1, 1)])
        self.clock.advance(SUMMARY_INTERVAL)
        self.assertEqual(self.lines, [(True, 1, 1), (False, 999, 1000)])
        self.drops.dropped(5)
        self.clock.advance(SUMMARY_INTERVAL / 2)
        self.assertEqual(len(self.lines), 2)
        self.clock.advance(SUMMARY_INTERVAL / 2)
        self.assertEqual(self.lines[-1], (False, 5, 1005))

    def test_quietQueueStopsTheTimer(self) -> None:
        self.drops.dropped()
        self.clock.advance(SUMMARY_INTERVAL)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.lines), 1)

    def test_cancelLogsPending(self) -> None:
        self.drops.dropped(3)
        self.drops.cancel()
        self.assertEqual(self.lines, [(True, 3, 3), (False, 2, 3)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_withoutTimerTheNextDropAfterTheIntervalSummarises(self) -> None:
        lines: list[tuple[bool, int, int]] = []
        drops = DropLog(lambda *a: lines.append(a), None, self.clock.seconds)
        drops.dropped()
        drops.dropped()
        self.assertEqual(len(lines), 1)
        self.clock.advance(SUMMARY_INTERVAL)
        drops.dropped()
        self.assertEqual(lines[-1], (False, 2, 3))
