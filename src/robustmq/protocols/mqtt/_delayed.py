"""Delayed publish: C{$delayed/<seconds>/<topic>} is published after that many seconds."""

from __future__ import annotations

import heapq
import itertools
from typing import TYPE_CHECKING, Any

from robustmq.core.message import Message

if TYPE_CHECKING:
    from robustmq.core.broker import Broker

DELAYED_PREFIX = "$delayed/"
MAX_DELAY = 4294967  # seconds, as EMQX


def parseDelayed(topic: str) -> tuple[int, str] | None:
    """(seconds, real topic) for a C{$delayed/...} topic; None if it is not one.

    @raise ValueError: a C{$delayed/} topic without a valid interval and topic.
    """
    if not topic.startswith(DELAYED_PREFIX):
        return None
    seconds, sep, real = topic[len(DELAYED_PREFIX) :].partition("/")
    if not sep or not real or not seconds.isdigit() or int(seconds) > MAX_DELAY:
        raise ValueError("expected $delayed/<seconds>/<topic> with seconds <= 4294967")
    return int(seconds), real


class DelayedMessages:
    """Holds delayed messages on one timer; at most C{maxMessages} at once.

    At the bound a new delayed message is refused (the protocol answers 0x97
    Quota Exceeded under MQTT 5, and logs it).  Held in memory: a restart
    loses them.
    """

    def __init__(self, broker: Broker, maxMessages: int) -> None:
        self._broker = broker
        self._max = maxMessages
        self._heap: list[tuple[float, int, Message]] = []
        self._seq = itertools.count()
        self._timer: Any = None

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, message: Message, seconds: int) -> bool:
        """Publish C{message} after C{seconds}; False when the bound is reached."""
        if len(self._heap) >= self._max:
            return False
        due = self._broker.now() + seconds
        heapq.heappush(self._heap, (due, next(self._seq), message))
        self._broker.stats.messagesDelayed += 1
        self._schedule()
        return True

    def _schedule(self) -> None:
        if not self._heap:
            return
        due = self._heap[0][0]
        delay = max(0.0, due - self._broker.now())
        if self._timer is not None and self._timer.active():
            if self._timer.getTime() <= due:
                return
            self._timer.cancel()
        self._timer = self._broker.callLater(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = self._broker.now()
        while self._heap and self._heap[0][0] <= now:
            _, _, message = heapq.heappop(self._heap)
            message.timestamp = now
            # Nobody waits for a delayed message's writes, and no publisher can pause.
            self._broker.publish(message).background()
        self._schedule()

    def stop(self) -> None:
        """Cancel the timer (shutdown)."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
