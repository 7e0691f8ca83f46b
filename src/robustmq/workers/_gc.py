"""The garbage collector of a broker process, tuned for many short-lived messages.

CPython's cyclic collector runs a young-generation pass every 700 net
allocations; a broker allocates several objects per message (the message,
its encodings, queue entries), so at a few hundred thousand messages a
second the passes cost 5-15 % of the process's time, and every pass also
walks the long-lived objects that start-up created.  Every RobustMQ process
raises the young-generation threshold (passes a hundred times rarer: the
message objects are freed by reference counting, not by the collector) and,
once the reactor runs, freezes what start-up allocated (never scanned again).
Cyclic garbage is still collected, later: at most about a hundred thousand
allocations' worth waits for the next pass.
"""

from __future__ import annotations

import gc
from typing import Any

#: Net allocations between young-generation passes (CPython's default is 700).
YOUNG_THRESHOLD = 100_000
#: Young passes per middle pass and middle passes per full pass (defaults: 10, 10).
OLDER_THRESHOLDS = (50, 50)


def tuneGarbageCollector(reactor: Any) -> None:
    """Raise the collector's thresholds now and freeze start-up's objects once running."""
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
    reactor.callWhenRunning(gc.freeze)


__all__ = ["tuneGarbageCollector"]
