"""A publisher that stops reading while the delivery targets it filled are congested.

Protocols whose publishers can be paused (an AMQP connection, say) hand
the congested targets of a publish's L{Outcome} to a L{PublisherGate};
the gate pauses reading and resumes it once every one of them has told it
C{congestionCleared} (L{robustmq.interfaces.ICongestible}).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["PublisherGate"]


class PublisherGate:
    """Pauses one publisher until the targets it waits for have drained."""

    __slots__ = ("_pause", "_resume", "blockedOn")

    def __init__(self, pause: Callable[[], None], resume: Callable[[], None]) -> None:
        self._pause = pause
        self._resume = resume
        self.blockedOn: set[Any] = set()

    def waitFor(self, targets: Iterable[Any]) -> None:
        """Pause (once) until each still-congested target of C{targets} drains."""
        wasBlocked = bool(self.blockedOn)
        for target in targets:
            if target.congested and target not in self.blockedOn:
                target.addWaiter(self)
                self.blockedOn.add(target)
        if self.blockedOn and not wasBlocked:
            self._pause()

    def congestionCleared(self, target: Any) -> None:
        """C{target} drained (or gave up on its publishers): resume when none is left."""
        if target in self.blockedOn:
            self.blockedOn.discard(target)
            if not self.blockedOn:
                self._resume()

    def release(self) -> None:
        """The publisher went away: stop waiting for anything."""
        for target in self.blockedOn:
            target.removeWaiter(self)
        self.blockedOn.clear()
