"""Token buckets for connection, message and byte rates."""

from __future__ import annotations

from typing import Any


class TokenBucket:
    """C{rate} tokens per second, holding at most C{burst}.

    L{take} always succeeds and may leave the bucket in debt: it returns how
    long to wait until the debt is repaid (0.0 when there was enough), so a
    caller that stops reading for that long keeps to the rate on average
    without dropping anything.
    """

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def _refill(self, now: float) -> None:
        elapsed = now - self.stamp
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.stamp = now

    def take(self, n: float, now: float) -> float:
        """Spend C{n} tokens; seconds to wait before spending more."""
        self._refill(now)
        self.tokens -= n
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def tryTake(self, n: float, now: float) -> bool:
        """Spend C{n} tokens only if there are enough."""
        self._refill(now)
        if self.tokens < n:
            return False
        self.tokens -= n
        return True


class PublishLimiter:
    """One client's message and byte buckets (C{[limits] message_rate}, C{byte_rate})."""

    __slots__ = ("messages", "bytes")

    def __init__(self, limits: Any, now: float) -> None:
        self.messages = (
            TokenBucket(limits.message_rate, limits.message_burst, now)
            if limits.message_rate
            else None
        )
        self.bytes = (
            TokenBucket(limits.byte_rate, limits.byte_burst, now) if limits.byte_rate else None
        )

    def take(self, size: int, now: float) -> float:
        """Account one PUBLISH of C{size} bytes; seconds to stop reading for."""
        delay = 0.0
        if self.messages is not None:
            delay = self.messages.take(1, now)
        if self.bytes is not None:
            delay = max(delay, self.bytes.take(size, now))
        return delay


__all__ = ["PublishLimiter", "TokenBucket"]
