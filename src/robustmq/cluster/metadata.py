"""Users, ACL rules (MQTT and Kafka), AMQP permissions and bans shared by every broker through the placement center.

L{ClusterMetadataStore} is the security layer's L{IMetadataStore} in a
cluster.  Reads stay local and synchronous (the in-memory view, backed by
the node's SQLite file so a restarted broker has them before it reaches the
placement center).  A write is applied locally at once and sent to the
placement center as the cluster config entry C{meta.<kind>.<key>} (the
record as JSON; an empty value marks a deletion); the placement center
pushes it to every broker, which applies it to its own view and tells the
security code's watchers (ACL reloads, and so on).  The latest write to a
key wins.

On (re-)registration the snapshot's entries replace the local ones; local
records the placement center has never seen (a node that kept users before
joining, or wrote while the placement center was away) are sent up.
Writes that fail are retried every second; at most one pending write per
key is kept, so the retry queue is bounded by the number of records.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger
from zope.interface import implementer

from robustmq.core.security.metadata import EmbeddedMetadataStore, IMetadataStore

PREFIX = "meta."
KINDS = ("users", "acl", "bans", "kafka_acl", "amqp_permissions")


def configKey(kind: str, key: str) -> str:
    """The placement config key of a record."""
    return f"{PREFIX}{kind}.{key}"


def parseKey(entryKey: str) -> tuple[str, str] | None:
    """(kind, key) of a C{meta.<kind>.<key>} config key, or None."""
    if not entryKey.startswith(PREFIX):
        return None
    kind, sep, key = entryKey[len(PREFIX) :].partition(".")
    if not sep or kind not in KINDS or not key:
        return None
    return kind, key


@implementer(IMetadataStore)
class ClusterMetadataStore(EmbeddedMetadataStore):
    """The node's embedded store, kept in step with the placement center (see module)."""

    log = Logger()

    def __init__(self, path: str) -> None:
        super().__init__(path)
        #: the ClusterNode, attached once it exists (before that, writes stay local)
        self.node: Any = None
        self._pending: dict[tuple[str, str], str] = {}
        self._sending = False

    # Local writes: apply, then share

    def put(self, kind: str, key: str, value: dict[str, Any]) -> Any:
        d = super().put(kind, key, value)
        self._share(kind, key, json.dumps(value, separators=(",", ":"), sort_keys=True))
        return d

    def delete(self, kind: str, key: str) -> Any:
        d = super().delete(kind, key)
        self._share(kind, key, "")
        return d

    def _share(self, kind: str, key: str, text: str) -> None:
        self._pending[(kind, key)] = text
        if not self._sending and self.node is not None:
            self._sending = True
            ensureDeferred(self._send())

    async def _send(self) -> None:
        while self._pending:
            (kind, key), text = next(iter(self._pending.items()))
            try:
                await self.node.placement.call("setConfig", configKey(kind, key), text)
            except Exception as e:
                self.log.warn(
                    "sharing a {kind} change with the cluster failed ({e}); retrying",
                    kind=kind,
                    e=str(e),
                )
                self.node.reactor.callLater(1.0, self._retry)
                return  # still "sending": the retry goes on
            if self._pending.get((kind, key)) == text:
                del self._pending[(kind, key)]
        self._sending = False

    def _retry(self) -> None:
        ensureDeferred(self._send())

    # Pushed changes

    def applyPushed(self, entryKey: str, text: str) -> None:
        """A C{meta.*} config entry from the placement center."""
        parsed = parseKey(entryKey)
        if parsed is None:
            return
        kind, key = parsed
        if (kind, key) in self._pending:
            return  # our own newer write is on its way
        current = self.get(kind, key)
        if not text:
            if current is not None:
                EmbeddedMetadataStore.delete(self, kind, key)
            return
        try:
            value = json.loads(text)
        except ValueError:
            self.log.warn("ignoring a malformed {kind} record {key}", kind=kind, key=key)
            return
        if current != value:
            EmbeddedMetadataStore.put(self, kind, key, value)

    def resync(self, entries: list[Any]) -> None:
        """A registration snapshot: take the cluster's records, send up what it lacks."""
        known: set[tuple[str, str]] = set()
        for entry in entries:
            parsed = parseKey(entry.key)
            if parsed is not None:
                known.add(parsed)
                self.applyPushed(entry.key, entry.value)
        for kind in KINDS:
            for key, value in self.items(kind):
                if (kind, key) not in known:
                    self._share(kind, key, json.dumps(value, separators=(",", ":"), sort_keys=True))
        if self._pending and not self._sending and self.node is not None:
            self._sending = True
            ensureDeferred(self._send())
