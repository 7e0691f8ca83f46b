"""What routing a message (or changing a subscription) caused, handed back to the caller.

The core never leaves its effects in shared lists for callers to read and
clear: L{robustmq.core.broker.Broker.publish} and the other calls that may
cause durable writes or congestion take an L{Outcome}, every delivery
target records into it, and the caller decides what to do (hold an
acknowledgement until the writes fire, pause the publisher until the
congested targets drain, or let the writes run in the background).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from robustmq.core.persistence import logWriteFailure

__all__ = ["Outcome"]


class Outcome:
    """The effects of one publish (or subscribe, or session change) on the broker.

    @ivar delivered: how many subscribers (delivery targets) the message reached.
    @ivar writes: durable writes the caller's acknowledgement must wait for
        (Deferreds), or None when there are none.
    @ivar congested: delivery targets whose bounded queues are full; a
        publisher that can pause (stop reading) waits until each of them
        calls its C{congestionCleared}; None when there are none.
    @ivar refused: how many targets refused the message at their bound
        (an AMQP queue with C{x-overflow = reject-publish}); an AMQP
        publisher confirm is a nack when any did.
    """

    __slots__ = ("delivered", "writes", "congested", "refused")

    log = Logger()

    def __init__(self) -> None:
        self.delivered = 0
        self.writes: list[defer.Deferred[Any]] | None = None
        self.congested: list[Any] | None = None
        self.refused = 0

    def __repr__(self) -> str:
        return (
            f"<Outcome delivered={self.delivered} writes={len(self.writes or ())} "
            f"congested={len(self.congested or ())}>"
        )

    def wait(self, write: defer.Deferred[Any] | None) -> None:
        """The acknowledgement of what is being handled must wait for C{write} (None: nothing)."""
        if write is None:
            return
        writes = self.writes
        if writes is None:
            self.writes = [write]
        elif writes[-1] is not write:  # a store's batch shared by consecutive writes
            writes.append(write)

    def congest(self, target: Any) -> None:
        """C{target}'s queue is full: the publisher should wait for it to drain."""
        congested = self.congested
        if congested is None:
            self.congested = [target]
        else:
            congested.append(target)

    def absorb(self, other: Outcome) -> None:
        """Add C{other}'s effects to these (its delivered count, writes and congestion)."""
        self.delivered += other.delivered
        self.refused += other.refused
        if other.writes:
            for write in other.writes:
                self.wait(write)
        if other.congested:
            for target in other.congested:
                self.congest(target)

    def allWritten(self) -> defer.Deferred[Any]:
        """Fires once every write has fired (failures consumed; see L{background})."""
        if not self.writes:
            return defer.succeed(None)
        return defer.gatherResults(self.writes, consumeErrors=True)

    def background(self) -> None:
        """Nobody acknowledges these writes: log their failures instead of holding them.

        For broker-originated messages (wills, $SYS, delayed publishes) and
        other publishes with no client waiting; congestion is ignored, as
        there is no connection to pause.
        """
        writes = self.writes
        if writes:
            self.writes = None
            for d in writes:
                d.addErrback(lambda f: logWriteFailure(self.log, f, "durable write failed"))
        self.congested = None
