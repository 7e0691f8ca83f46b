"""Session hand-over between brokers: a connecting client's session is claimed in the
placement center and brought here from the broker that had it."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from twisted.internet import defer
from twisted.internet.task import deferLater

from robustmq.cluster import wire
from robustmq.cluster.moves import routeKeys
from robustmq.core.outcome import Outcome
from robustmq.core.persistence import (
    decodeMessage,
    deliveryValue,
)
from robustmq.core.subscription import SubscriptionOptions


class TakeoverFailed(Exception):
    """A session could not be handed over from the node that had it."""


def packRecord(record: dict[str, Any]) -> list[bytes]:
    """A session record (L{SessionRegistry.export} form) as PB-safe chunks."""
    header = {k: v for k, v in record.items() if k != "messages"}
    held = [
        json.dumps([seq, h["pid"], h["dq"], h["st"]]).encode()
        + b"\n"
        + deliveryValue(message, h["dq"], sub, h["pid"], h["st"])
        for seq, message, h, sub in record["messages"]
    ]
    return wire.pack([json.dumps(header).encode(), *held])


def unpackRecord(chunks: list[bytes]) -> dict[str, Any]:
    """The inverse of L{packRecord}."""
    entries = wire.unpack(chunks)
    record: dict[str, Any] = json.loads(entries[0])
    messages = []
    for entry in entries[1:]:
        line, _, value = entry.partition(b"\n")
        seq, pid, dq, st = json.loads(line)
        message, header = decodeMessage(value)
        sub = SubscriptionOptions(
            qos=header["dq"], keepRetain=header["kr"], identifiers=tuple(header["ids"])
        )
        messages.append((seq, message, {"pid": pid, "dq": dq, "st": st}, sub))
    record["messages"] = messages
    return record


class HandOver:
    """The ClusterNode's session hand-over (mixed into L{robustmq.cluster.node.ClusterNode})."""

    # Sessions

    def prepareSession(self, clientId: str, cleanStart: bool, expiry: int) -> defer.Deferred[None]:
        """Claim C{clientId}'s session; if another node had it, take it over from there."""
        d = defer.ensureDeferred(self._prepare(clientId, cleanStart, expiry))
        d.addTimeout(self.cluster.takeover_timeout, self.reactor)
        return d

    async def _prepare(self, clientId: str, cleanStart: bool, expiry: int) -> None:
        previous = await self.placement.call("claimSession", clientId, expiry)
        if previous is None or previous.nodeId == self.nodeId:
            return
        owner = previous.nodeId
        self._arriving.setdefault(clientId, [])
        try:
            await self._takeOver(clientId, cleanStart, owner)
        finally:
            self._arrivalDone(clientId)

    async def _takeOver(self, clientId: str, cleanStart: bool, owner: str) -> None:
        """Bring C{clientId}'s session here from C{owner} (or from its copy, if it died)."""
        while True:
            holder = owner if self._alive(owner) else self.replicaOf.get(owner)
            if holder is None:
                self.log.info(
                    "{clientId}: its node {owner} is gone and kept no copy; new session",
                    clientId=clientId,
                    owner=owner,
                )
                return
            if holder == self.nodeId:
                await self.adopt(owner)
                if cleanStart:
                    session = self.mqtt.sessions.get(clientId)
                    if session is not None:
                        self.mqtt.sessions.discard(session)
                return
            link = self.links.get(holder)
            if link is not None:
                try:
                    chunks = await link.call(
                        "handOver",
                        clientId,
                        cleanStart,
                        owner,
                        timeout=self.cluster.takeover_timeout,
                    )
                except Exception as e:
                    self.log.info(
                        "{clientId}: hand-over from {holder} failed ({e}); retrying",
                        clientId=clientId,
                        holder=holder,
                        e=str(e),
                    )
                else:
                    if chunks:
                        await self._install(unpackRecord(chunks))
                    self.log.info(
                        "{clientId}: session taken over from {holder}",
                        clientId=clientId,
                        holder=holder,
                    )
                    return
            await deferLater(self.reactor, 0.2, lambda: None)

    async def _install(self, record: dict[str, Any]) -> None:
        clientId = record["clientId"]
        outcome = Outcome()
        self.mqtt.sessions.adopt(record, outcome)
        self.moves.arrive(clientId, record.get("trail") or ())
        self._arrivalDone(clientId)
        await outcome.allWritten()

    async def handOver(
        self, caller: str, clientId: str, discard: bool, owner: str
    ) -> list[bytes] | None:
        """Give C{clientId}'s session to C{caller}: close its connection, export, forget it."""
        if owner != self.nodeId:
            await self.adopt(owner)
        sessions = self.mqtt.sessions
        session = sessions.get(clientId)
        if session is None:
            return None
        self._handingOver.add(clientId)
        try:
            self._closeMovedConnection(session)
            # The client connected there: a pending will is deleted (MQTT-3.1.2-8).
            session.pendingWill = session.willDueAt = None
            chunks = None
            if not discard:
                record = sessions.export(session)
                # What still reaches us for it goes on to the caller (moves.py).
                record["trail"] = self.moves.depart(clientId, caller, session.subscriptions)
                self._holdRoutes(session.subscriptions)
                chunks = packRecord(record)
            self.log.info(
                "{clientId}: session handed over to {caller}", clientId=clientId, caller=caller
            )
            outcome = Outcome()
            sessions.discard(session, outcome)
            await outcome.allWritten()
            return chunks
        finally:
            self._handingOver.discard(clientId)

    def _closeMovedConnection(self, session: Any) -> None:
        """Close the connection of a session another broker takes (0x8E): its client
        connected there, so a will with a delay is deleted (MQTT-3.1.2-8); one without
        is published as the connection closes."""
        delayed = getattr(session.connection, "willDelay", 0) > 0
        self.mqtt.sessions.takeOverConnection(session, keepWill=not delayed)

    def _holdRoutes(self, filters: Iterable[str]) -> None:
        """Keep our routes for a session that left for half the hand-over window, so that
        the route table never lacks both its old and its new broker."""
        normal, shared = routeKeys(filters)
        keys = normal + shared
        for key in keys:
            self.routes.added(key)
        self.reactor.callLater(self.cluster.handover_window / 2, self._releaseRoutes, keys)

    def _releaseRoutes(self, keys: list[str]) -> None:
        for key in keys:
            self.routes.removed(key)

    def sessionEnded(self, clientId: str) -> None:
        if clientId in self._handingOver or not self.running:
            return
        d = defer.ensureDeferred(self.placement.call("releaseSession", clientId))
        d.addErrback(lambda f: None)  # another node owns it now, or placement is away
