"""The values and handles that placement backends hand back."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, unquote

import attrs
from twisted.logger import Logger


@attrs.frozen
class KeyValue:
    """One stored key with its value and the backend's bookkeeping.

    @ivar createRevision: the store revision that created the key.
    @ivar modRevision: the store revision of its last change.
    @ivar lease: the lease the key is attached to (0: none).
    """

    key: str
    value: bytes
    createRevision: int = 0
    modRevision: int = 0
    lease: int = 0


class Watcher:
    """One prefix watch registered with a backend; C{stop()} ends it."""

    log = Logger()

    def __init__(
        self,
        prefix: str,
        onPut: Callable[[KeyValue], Any],
        onDelete: Callable[[str], Any],
        stopper: Callable[[Watcher], None],
    ) -> None:
        self.prefix = prefix
        self.onPut = onPut
        self.onDelete = onDelete
        self.active = True
        self._stopper = stopper

    def stop(self) -> None:
        """Report nothing more; idempotent."""
        if self.active:
            self.active = False
            self._stopper(self)

    def deliverPut(self, kv: KeyValue) -> None:
        """Hand a put to the callback (errors are logged, never raised into the backend)."""
        if self.active and kv.key.startswith(self.prefix):
            try:
                self.onPut(kv)
            except Exception:
                self.log.failure("placement watch callback for {prefix} failed", prefix=self.prefix)

    def deliverDelete(self, key: str) -> None:
        """Hand a delete to the callback (errors are logged)."""
        if self.active and key.startswith(self.prefix):
            try:
                self.onDelete(key)
            except Exception:
                self.log.failure("placement watch callback for {prefix} failed", prefix=self.prefix)


#: Parts that percent-encoding leaves as they are.
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*\Z")


def keyOf(*parts: str) -> str:
    """A backend key from path parts, each percent-encoded so that a client
    id or topic filter containing C{/} cannot collide with another key."""
    return "/".join(p if _UNRESERVED.match(p) else quote(p, safe="") for p in parts)


def lastPart(key: str) -> str:
    """The decoded last part of a key made by L{keyOf}."""
    return unquote(key.rsplit("/", 1)[-1])


__all__ = ["KeyValue", "Watcher", "keyOf", "lastPart"]
