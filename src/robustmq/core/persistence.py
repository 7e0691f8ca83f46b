"""Durable broker state in compacted shards: persistent sessions, their messages, retained.

Four compacted shards hold everything a restarted node needs:

- C{mqtt/sessions}: client id → session record (expiry, subscriptions, when it went offline);
- C{mqtt/session-messages}: client id + sequence → a QoS 1/2 message held for a
  persistent session (queued or in flight, with its packet id and QoS 2 state);
- C{mqtt/incoming-qos2}: client id + packet id → marker of an incoming QoS 2 message
  routed but not yet released (so a resend after a restart is not routed twice);
- C{mqtt/retained}: topic → the retained message.

Writes return Deferreds that fire once the store says the data is durable
(per its sync policy); the protocol sends PUBACK/PUBREC/SUBACK only after
the writes a packet caused have fired.  Sessions that end with their
connection (expiry 0) and QoS 0 messages are never written.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any, Protocol

from twisted.internet import defer
from twisted.logger import Logger

from robustmq.core.message import Message
from robustmq.core.subscription import SubscriptionOptions
from robustmq.interfaces import (
    CorruptRecordError,
    IShardStore,
    StorageError,
    StorageUnavailableError,
)


class Session(Protocol):
    """The state of a session that is stored (the MQTT protocol's session provides it)."""

    clientId: str
    expiryInterval: int
    disconnectedAt: float | None
    nextSeq: int
    subscriptions: dict[str, SubscriptionOptions]
    storedSeqs: set[int]
    awaitingRel: Any
    inflight: dict[int, list[Any]]
    queue: Any
    pendingWill: Message | None
    willDueAt: float | None


SESSIONS = "mqtt/sessions"
MESSAGES = "mqtt/session-messages"
INCOMING = "mqtt/incoming-qos2"
RETAINED = "mqtt/retained"

_HEADER = struct.Struct("!I")
_SEP = b"\x00"


def propertiesToJson(props: dict[str, Any] | None) -> dict[str, Any] | None:
    """MQTT 5 properties in a JSON-able form (bytes as base64); None when empty."""
    if not props:
        return None
    out: dict[str, Any] = {}
    for k, v in props.items():
        if isinstance(v, bytes):
            out[k] = {"b64": base64.b64encode(v).decode()}
        else:
            out[k] = v
    return out


def propertiesFromJson(props: dict[str, Any] | None) -> dict[str, Any] | None:
    """The inverse of L{propertiesToJson}."""
    if not props:
        return None
    out: dict[str, Any] = {}
    for k, v in props.items():
        if isinstance(v, dict) and "b64" in v:
            out[k] = base64.b64decode(v["b64"])
        elif k == "user_property":
            out[k] = [tuple(pair) for pair in v]
        else:
            out[k] = v
    return out


def encodeMessage(message: Message, extra: dict[str, Any] | None = None) -> bytes:
    """A message (plus delivery state in C{extra}) as bytes: JSON header, then the payload."""
    header = {
        "t": message.topic,
        "q": message.qos,
        "r": message.retain,
        "ts": message.timestamp,
        "x": message.expiresAt,
        "o": message.origin,
        "p": propertiesToJson(message.properties),
    }
    if extra:
        header.update(extra)
    h = json.dumps(header, separators=(",", ":")).encode()
    return _HEADER.pack(len(h)) + h + message.payload


def decodeMessage(data: bytes) -> tuple[Message, dict[str, Any]]:
    """The inverse of L{encodeMessage}: the message and the whole header."""
    (n,) = _HEADER.unpack_from(data)
    header = json.loads(data[4 : 4 + n])
    m = Message(
        header["t"],
        data[4 + n :],
        header["q"],
        header["r"],
        header["ts"],
        propertiesFromJson(header["p"]),
        header["o"],
    )
    m.expiresAt = header["x"]
    return m, header


def logWriteFailure(log: Logger, failure: Any, message: str, **fields: Any) -> None:
    """
    Log a failed durable write that nothing waits for.

    A store that refuses writes (disk full, failed disk) has said why once
    (L{StorageUnavailableError}): each refused write is only a debug line, so
    a full disk does not flood the log.  Other storage errors get one line,
    anything else a traceback.
    """
    if failure.check(StorageUnavailableError):
        log.debug(message + ": {error}", error=str(failure.value), **fields)
    elif failure.check(StorageError):
        log.warn(message + ": {error}", error=str(failure.value), **fields)
    else:
        log.failure(message, failure, **fields)


def _subKey(clientId: str, n: int) -> bytes:
    return clientId.encode() + _SEP + b"%016x" % n


class SessionPersistence:
    """Reads and writes the broker's durable state through an L{IShardStore}."""

    log = Logger()

    def __init__(self, store: IShardStore, prefix: str = "") -> None:
        self.store = store
        #: shard names (a prefix reads a copy kept elsewhere, e.g. a cluster replica)
        self.sessionsShard = prefix + SESSIONS
        self.messagesShard = prefix + MESSAGES
        self.incomingShard = prefix + INCOMING
        self.retainedShard = prefix + RETAINED

    async def open(self) -> None:
        """Create the shards if this is a new store."""
        for shard in (
            self.sessionsShard,
            self.messagesShard,
            self.incomingShard,
            self.retainedShard,
        ):
            await self.store.createShard(shard, {"compacted": True})

    async def _scan(self, shard: str) -> dict[bytes, bytes]:
        """Every live key of a compacted shard with its latest value.

        Damaged records are skipped with one log line each (the key keeps
        its last readable value, or is gone if it had none).
        """
        start, end = await self.store.offsets(shard)
        latest: dict[bytes, bytes] = {}
        offset = start
        while offset < end:
            try:
                records = await self.store.read(shard, offset, 10_000, 16 * 1024 * 1024)
            except CorruptRecordError as e:
                if e.lastOffset is None or e.lastOffset < offset:
                    raise
                self.log.warn(
                    "recovery of {shard}: skipped damaged records {first}..{last}",
                    shard=shard,
                    first=e.firstOffset,
                    last=e.lastOffset,
                )
                offset = e.lastOffset + 1
                continue
            if not records:
                break
            for record in records:
                key = record["key"]
                if record["value"] is None:
                    latest.pop(key, None)
                else:
                    latest[key] = record["value"]
            offset = records[-1]["offset"] + 1
        return latest

    # Retained messages

    async def loadRetained(self) -> list[Message]:
        """Every stored retained message."""
        return [decodeMessage(v)[0] for v in (await self._scan(self.retainedShard)).values()]

    def saveRetained(self, message: Message) -> defer.Deferred[Any]:
        """Store (or, for an empty payload, delete) the retained message of its topic."""
        key = message.topic.encode()
        if not message.payload:
            return self.store.deleteKey(self.retainedShard, key)
        return self.store.upsert(self.retainedShard, key, encodeMessage(message))

    # Sessions

    def saveSession(self, session: Session) -> defer.Deferred[Any]:
        """Write a session's record: expiry, subscriptions, when it went offline."""
        return self.store.upsert(
            self.sessionsShard, session.clientId.encode(), sessionRecord(session)
        )

    def deleteSession(self, session: Session) -> defer.Deferred[Any]:
        """Forget a session and everything held for it."""
        cid = session.clientId
        writes = [self.store.deleteKey(self.sessionsShard, cid.encode())]
        for seq in session.storedSeqs:
            writes.append(self.store.deleteKey(self.messagesShard, _subKey(cid, seq)))
        for pid in session.awaitingRel:
            writes.append(self.store.deleteKey(self.incomingShard, _subKey(cid, pid)))
        session.storedSeqs.clear()
        return defer.DeferredList(writes, consumeErrors=True)

    def saveDelivery(
        self, session: Session, seq: int, message: Message, qos: int, sub: Any, pid: int, state: int
    ) -> defer.Deferred[Any]:
        """Hold a QoS 1/2 message for a persistent session (pid 0: still queued)."""
        session.storedSeqs.add(seq)
        return self.store.upsert(
            self.messagesShard,
            _subKey(session.clientId, seq),
            deliveryValue(message, qos, sub, pid, state),
        )

    def deleteDelivery(self, session: Session, seq: int) -> defer.Deferred[Any]:
        """The message was acknowledged (or dropped): stop holding it."""
        session.storedSeqs.discard(seq)
        return self.store.deleteKey(self.messagesShard, _subKey(session.clientId, seq))

    def saveIncoming(self, session: Session, pid: int) -> defer.Deferred[Any]:
        """An incoming QoS 2 message was routed; PUBREL will clear it."""
        return self.store.upsert(self.incomingShard, _subKey(session.clientId, pid), b"1")

    def deleteIncoming(self, session: Session, pid: int) -> defer.Deferred[Any]:
        """PUBREL arrived for an incoming QoS 2 message."""
        return self.store.deleteKey(self.incomingShard, _subKey(session.clientId, pid))

    async def loadSessions(self) -> list[dict[str, Any]]:
        """Every stored session: its record plus held messages (in order) and incoming ids."""
        sessions = {
            k.decode(): json.loads(v) for k, v in (await self._scan(self.sessionsShard)).items()
        }
        for record in sessions.values():
            record["messages"] = []
            record["incoming"] = []
        for key, value in sorted((await self._scan(self.messagesShard)).items()):
            cid, _, seq = key.rpartition(_SEP)
            record = sessions.get(cid.decode())
            if record is None:
                continue
            message, header = decodeMessage(value)
            sub = SubscriptionOptions(
                qos=header["dq"], keepRetain=header["kr"], identifiers=tuple(header["ids"])
            )
            record["messages"].append((int(seq, 16), message, header, sub))
        for key in (await self._scan(self.incomingShard)).keys():
            cid, _, pid = key.rpartition(_SEP)
            record = sessions.get(cid.decode())
            if record is not None:
                record["incoming"].append(int(pid, 16))
        return [{"clientId": cid, **record} for cid, record in sessions.items()]


def sessionRecord(session: Session) -> bytes:
    """The stored form of a session's record (C{mqtt/sessions} value)."""
    record = {
        "expiry": session.expiryInterval,
        "offline": session.disconnectedAt,
        "seq": session.nextSeq,
        "subs": {f: o.toDict() for f, o in session.subscriptions.items()},
    }
    will = pendingWillToJson(session)
    if will is not None:
        record["will"] = will
    return json.dumps(record).encode()


def pendingWillToJson(session: Session) -> dict[str, Any] | None:
    """An offline session's delayed will (MQTT 5 Will Delay Interval) and when it is due."""
    will = session.pendingWill
    if will is None:
        return None
    return {"due": session.willDueAt, "message": base64.b64encode(encodeMessage(will)).decode()}


def pendingWillFromJson(value: dict[str, Any] | None) -> tuple[Message, float] | None:
    """The inverse of L{pendingWillToJson}: (will, when it is due)."""
    if not value:
        return None
    will, _ = decodeMessage(base64.b64decode(value["message"]))
    return will, float(value["due"])


def deliveryValue(message: Message, qos: int, sub: Any, pid: int, state: int) -> bytes:
    """The stored form of a message held for a session (C{mqtt/session-messages} value)."""
    extra = {
        "dq": qos,
        "pid": pid,
        "st": state,
        "ids": list(sub.identifiers) if sub is not None else [],
        "kr": bool(sub is not None and sub.keepRetain),
    }
    return encodeMessage(message, extra)


def sessionRows(session: Session) -> list[tuple[str, bytes, bytes]]:
    """Every (shard, key, value) a persistent session has in the store, as written by
    L{SessionPersistence}: its record, its held messages, its incoming QoS 2 markers."""
    cid = session.clientId
    rows = [(SESSIONS, cid.encode(), sessionRecord(session))]
    for pid, (message, qos, state, sub, seq) in session.inflight.items():
        rows.append((MESSAGES, _subKey(cid, seq), deliveryValue(message, qos, sub, pid, state)))
    for message, qos, sub, seq in session.queue:
        rows.append((MESSAGES, _subKey(cid, seq), deliveryValue(message, qos, sub, 0, 0)))
    for pid in session.awaitingRel:
        rows.append((INCOMING, _subKey(cid, pid), b"1"))
    return rows
