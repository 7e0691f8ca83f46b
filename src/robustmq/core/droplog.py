"""Logging of messages dropped by policy: the first drop at once, then rate-limited summaries.

A bounded queue that drops at its bound (an offline MQTT session at
C{max_queued_messages}, an AMQP queue at C{x-max-length}) does so by policy,
but silently losing messages surprises users: each such queue gets a
L{DropLog} at its first drop, which logs that drop and then at most one
summary line per L{SUMMARY_INTERVAL} while drops go on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: Seconds between two summary lines of one queue's drops.
SUMMARY_INTERVAL = 10.0

#: C{emit(first, count, total)}: C{first} for the first drop (C{count} is 1),
#: else a summary of C{count} drops since the last line (C{total} since the start).
Emit = Callable[[bool, int, int], None]


class DropLog:
    """Counts one queue's drops and logs them without flooding the log.

    @param emit: writes one log line (see L{Emit}).
    @param callLater: the reactor's C{callLater} for the summary timer, or
        None (then a summary is written by the next drop after the interval).
    @param now: the clock, for the no-timer case.
    """

    __slots__ = ("total", "pending", "_emit", "_callLater", "_now", "_timer", "_lastLine")

    def __init__(
        self,
        emit: Emit,
        callLater: Callable[..., Any] | None = None,
        now: Callable[[], float] | None = None,
    ) -> None:
        self.total = 0
        self.pending = 0
        self._emit = emit
        self._callLater = callLater
        self._now = now
        self._timer: Any = None
        self._lastLine = 0.0

    def dropped(self, n: int = 1) -> None:
        """Count C{n} dropped messages and log as the policy above says."""
        if n <= 0:
            return
        first = self.total == 0
        self.total += n
        if first:
            self._emit(True, n, self.total)
            self._lastLine = self._now() if self._now is not None else 0.0
            self.pending = n - 1
            self._arm()
            return
        self.pending += n
        if self._timer is None:
            if self._callLater is not None:
                self._arm()
            elif self._now is not None and self._now() - self._lastLine >= SUMMARY_INTERVAL:
                self._summary()

    def _arm(self) -> None:
        if self._callLater is not None and self._timer is None:
            self._timer = self._callLater(SUMMARY_INTERVAL, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self.pending:
            self._summary()
            self._arm()

    def _summary(self) -> None:
        count, self.pending = self.pending, 0
        self._emit(False, count, self.total)
        if self._now is not None:
            self._lastLine = self._now()

    def cancel(self) -> None:
        """Stop the summary timer (the queue is gone); pending drops are logged now."""
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        if self.pending:
            self._summary()


__all__ = ["DropLog", "SUMMARY_INTERVAL"]
