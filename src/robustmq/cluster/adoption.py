"""Replication and adoption: persistent sessions and wills copied to one other broker,
and a dead broker's sessions adopted from that copy."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from twisted.internet import defer
from twisted.internet.task import deferLater

from robustmq.cluster import wire
from robustmq.cluster.handover import TakeoverFailed
from robustmq.cluster.peers import FORWARD_FOR
from robustmq.cluster.replication import (
    WILLS,
)
from robustmq.core.outcome import Outcome
from robustmq.core.persistence import (
    decodeMessage,
    encodeMessage,
    sessionRows,
)

REPLICA_KEY = "replica."
#: "adopted.<dead node>" = the adopter, set once the adopted sessions' routes are in place
ADOPTED_KEY = "adopted."


class Adoption:
    """The ClusterNode's replicas and adoption (mixed into L{robustmq.cluster.node.ClusterNode})."""

    # Wills (kept on the replica while the client is connected)

    @property
    def wills(self) -> dict[str, bytes]:
        """Client id → stored will, of connected clients."""
        return {cid: value for cid, (_, value) in self._wills.items()}

    def connectionOpened(self, connection: Any) -> None:
        will = getattr(connection, "will", None)
        clientId = getattr(connection, "clientId", None)
        if will is None or clientId is None:
            return
        delay = getattr(connection, "willDelay", 0)
        value = encodeMessage(will, {"delay": delay} if delay else None)
        self._wills[clientId] = (connection, value)
        d = self.replicator.op(wire.UPSERT, WILLS, clientId.encode(), value)
        if d is not None:
            d.addErrback(lambda f: None)

    def connectionClosed(self, connection: Any) -> None:
        clientId = getattr(connection, "clientId", None)
        held = self._wills.get(clientId) if clientId is not None else None
        if held is None or held[0] is not connection:
            return
        del self._wills[clientId]  # type: ignore[arg-type]
        d = self.replicator.op(wire.DELETE, WILLS, clientId.encode(), None)  # type: ignore[union-attr]
        if d is not None:
            d.addErrback(lambda f: None)

    # Replication and adoption

    def sessionRows(self) -> Iterable[tuple[str, bytes, bytes]]:
        """Every stored row of this node's persistent sessions (for a full copy)."""
        for session in self.mqtt.sessions:
            if session.expiryInterval:
                yield from sessionRows(session)

    def chooseReplica(self, force: bool = False) -> None:
        """Replicate to the next live broker after this one (in node-id order)."""
        if not self.cluster.replication or self.broker.persistence is None:
            return
        ring = self.aliveBrokers()
        target = None
        if self.nodeId in ring and len(ring) > 1:
            target = ring[(ring.index(self.nodeId) + 1) % len(ring)]
        if target != self.replicator.target or force:
            self.replicator.retarget(target, force=True)

    def announceReplica(self, target: str) -> None:
        d = defer.ensureDeferred(
            self.placement.call("setConfig", f"{REPLICA_KEY}{self.nodeId}", target)
        )
        d.addErrback(lambda f: self.log.warn("announcing the replica failed: {e}", e=str(f.value)))

    async def _nodeDied(self, nodeId: str) -> None:
        link = self.links.pop(nodeId, None)
        pending = []
        if link is not None:
            pending = link.abandon()
            await link.stopService()
        holder = self.replicaOf.get(nodeId)
        if holder == self.nodeId or (holder is None and nodeId in await self.replicas.origins()):
            await self.adopt(nodeId)
        # What was on its way to the dead node goes to whoever adopts its sessions.
        target = self.links.get(holder) if holder and holder != self.nodeId else None
        for kind, data, waiter, _ in pending:
            if kind == "replicate":
                if waiter is not None and not waiter.called:
                    waiter.callback(None)  # the replica is gone; a new one gets a full copy
                continue
            if holder == self.nodeId:
                d: Any = self.receiveForward(nodeId, [wire.decodeForward(data)])
            elif target is not None:
                d = target.send(f"{FORWARD_FOR}{nodeId}", data, 1)
            else:
                d = defer.succeed(None)  # no copy of its sessions anywhere: nobody to deliver to
            if waiter is not None and d is not None:
                d.chainDeferred(waiter)

    def adopt(self, origin: str) -> defer.Deferred[None]:
        """Take over the sessions (and publish the wills) of dead C{origin} from our copy, once."""
        d = self._adoptions.get(origin)
        if d is None:
            d = self._adoptions[origin] = defer.ensureDeferred(self._adopt(origin))
            d.addErrback(self._adoptionFailed, origin)
        result: defer.Deferred[None] = defer.Deferred()
        d.addBoth(lambda r: (result.callback(None), r)[1])
        return result

    def _adoptionFailed(self, failure: Any, origin: str) -> None:
        self.log.failure("adopting the sessions of {origin} failed", failure, origin=origin)
        self._adoptions.pop(origin, None)

    async def _adopt(self, origin: str) -> None:
        deadline = self.reactor.seconds() + self.cluster.takeover_timeout
        while self._alive(origin) or origin not in self.nodes:
            if self.reactor.seconds() > deadline:
                raise TakeoverFailed(f"{origin} is not declared dead")
            await deferLater(self.reactor, 0.1, lambda: None)
        if origin not in await self.replicas.origins():
            self._ghosts.pop(origin, None)
            await self.placement.call(
                "setConfig", f"{ADOPTED_KEY}{origin}", f"{self.nodeId} {time.time()!r}"
            )
            return
        records, wills = await self.replicas.load(origin)
        adopted = []
        for record in records:
            if self.mqtt.sessions.get(record["clientId"]) is not None:
                continue  # its client is back here already
            await self._install(record)
            adopted.append(record)
        for value in wills:
            will, header = decodeMessage(value)
            delay = header.get("delay", 0)
            session = self.mqtt.sessions.get(will.origin) if delay and will.origin else None
            if session is not None and session.connection is None and session.expiryInterval:
                # Its connection ended with the node: the delay runs from now.
                self.mqtt.sessions.deferWill(session, will, delay)
            else:
                self.mqtt.publishWill(will)
        for record in adopted:
            clientId = record["clientId"]
            current = await self.placement.call("lookupSession", clientId)
            if current is None or current.nodeId == origin:
                await self.placement.call("claimSession", clientId, record["expiry"])
        self.log.warn(
            "adopted {n} persistent sessions and published {w} wills of dead broker {origin}",
            n=len(adopted),
            w=len(wills),
            origin=origin,
        )
        await self.replicas.reset(origin)
        self._ghosts.pop(origin, None)
        await self.placement.call(
            "setConfig", f"{ADOPTED_KEY}{origin}", f"{self.nodeId} {time.time()!r}"
        )

    async def _dropSessionsOwnedElsewhere(self) -> None:
        """Local sessions that another node took (adopted while this one was away or
        declared dead) are dropped, without their wills; their clients, if connected,
        are closed with the takeover reason and reconnect to the owner."""
        for session in list(self.mqtt.sessions):
            current = await self.placement.call("lookupSession", session.clientId)
            if self.mqtt.sessions.get(session.clientId) is not session:
                continue  # gone or replaced meanwhile
            if current is not None and current.nodeId != self.nodeId:
                self.log.info(
                    "{clientId}: session now lives on {node}; dropping the local copy",
                    clientId=session.clientId,
                    node=current.nodeId,
                )
                session.pendingWill = None
                self._handingOver.add(session.clientId)
                try:
                    self.mqtt.sessions.takeOverConnection(session, keepWill=False)
                    self.mqtt.sessions.discard(session)
                finally:
                    self._handingOver.discard(session.clientId)
            elif current is None:
                await self.placement.call("claimSession", session.clientId, session.expiryInterval)

    async def _afterFirstRegistration(self) -> None:
        """Sessions restored from disk that another node took meanwhile are dropped; retained
        messages are fetched from a live peer."""
        await self._dropSessionsOwnedElsewhere()
        broker = self.broker
        for nodeId in self.aliveBrokers():
            link = self.links.get(nodeId)
            if link is None:
                continue
            try:
                chunks = await link.call("retainedSnapshot", timeout=5.0)
            except Exception as e:
                self.log.info("no retained messages from {n}: {e}", n=nodeId, e=str(e))
                continue
            fetched = 0
            for value in wire.unpack(chunks):
                message, _ = decodeMessage(value)
                if broker.retained.get(message.topic) is None and broker.retained.update(message):
                    fetched += 1
                    if broker.persistence is not None:
                        stored = Outcome()
                        stored.wait(broker.persistence.saveRetained(message))
                        stored.background()
            self.log.info("fetched {n} retained messages from {node}", n=fetched, node=nodeId)
            break
