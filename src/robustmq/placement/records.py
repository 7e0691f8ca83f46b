"""The records that cross Perspective Broker and live in the placement backend.

Each record is an attrs class that is both a L{pb.Copyable} (sent by value)
and a L{pb.RemoteCopy} (rebuilt on the other side) registered under a
stable name, C{"robustmq.placement.<Class>"}: renaming or moving a module
does not change the wire.  A received record is re-validated by running the
attrs validators again (L{_Record.setCopyableState}), so a peer cannot hand
over a record that this side could not have built.

The same records are stored in the backend as JSON (L{encodeRecord},
L{decodeRecord}): C{{"type": "<Class>", ...fields}}.

Many records at once (a registration snapshot, a batch of pushes) cross PB
as that stored JSON rather than as jellied objects (L{encodeBatch},
L{decodeBatch}, L{EncodedSnapshot}): the leader keeps the encoded bytes and
sends the same bytes to every node, and the receiver decodes them with the
same validation a jellied record gets.  Jelly costs a Python call per field
on both sides, which at a thousand nodes made every registration quadratic.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import attrs
from twisted.spread import pb

from robustmq.placement.errors import InvalidRecordError

#: Node ids: short, printable, and usable inside a backend key.
NODE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
#: Roles a node may announce.
ROLES = frozenset({"broker", "placement"})
#: Upper bound of free-form strings (client ids, filters, config values).
MAX_TEXT = 65535
#: Largest piece of an encoded batch: PB (banana) refuses strings over 640 KiB.
BATCH_CHUNK = 256 * 1024
#: The sections of a registration snapshot and the records in each.
SNAPSHOT_SECTIONS = ("nodes", "routes", "shards", "config")

_REGISTRY: dict[str, type[_Record]] = {}
R = TypeVar("R", bound="_Record")


def _fail(message: str) -> None:
    raise InvalidRecordError(message)


def _nodeId(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not NODE_ID.match(value):
        _fail(f"{attribute.name}: {value!r} is not a node id ([A-Za-z0-9._:-], 1 to 128)")


def _optionalNodeId(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value != "":
        _nodeId(instance, attribute, value)


def _text(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_TEXT:
        _fail(f"{attribute.name}: expected a non-empty string of at most {MAX_TEXT} characters")


def _anyText(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        _fail(f"{attribute.name}: expected a string of at most {MAX_TEXT} characters")


def _nonNegativeInt(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        _fail(f"{attribute.name}: expected an integer >= 0, got {value!r}")


def _number(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        _fail(f"{attribute.name}: expected a number >= 0, got {value!r}")


def _strTuple(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple | set | frozenset):
        _fail(f"expected a list of strings, got {value!r}")
    return tuple(value)


class _Record(pb.Copyable, pb.RemoteCopy):
    """Base of the placement records: copied by value under a stable name."""

    #: The stable name, set by L{_register}.
    typeName = ""

    def getTypeToCopy(self) -> bytes:
        return f"robustmq.placement.{self.typeName}".encode()

    #: The attrs field names, set by L{_register}.
    fieldNames: tuple[str, ...] = ()

    def getStateToCopy(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.fieldNames}

    def setCopyableState(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict):
            _fail(f"{self.typeName}: state is not a dict")
        try:
            self.__init__(**state)  # type: ignore[misc]
        except TypeError as e:
            raise InvalidRecordError(f"{self.typeName}: {e}") from None


def _register(cls: type[R]) -> type[R]:
    cls.typeName = cls.__name__
    cls.fieldNames = tuple(a.name for a in attrs.fields(cls))  # type: ignore[arg-type]
    _REGISTRY[cls.__name__] = cls
    pb.setUnjellyableForClass(f"robustmq.placement.{cls.__name__}".encode(), cls)
    return cls


@_register
@attrs.define(frozen=True, slots=False)
class NodeInfo(_Record):
    """A cluster node: who it is, what it runs, where to reach it."""

    nodeId: str = attrs.field(validator=_nodeId)
    roles: tuple[str, ...] = attrs.field(converter=_strTuple)
    #: listener name -> "host:port" (e.g. {"mqtt": "10.0.0.5:1883"}).
    addresses: dict[str, str] = attrs.field(factory=dict)
    #: Seconds since the epoch when the node process started.
    startedAt: float = attrs.field(default=0.0, validator=_number)
    #: "alive" or "dead" (declared by the placement leader).
    state: str = attrs.field(default="alive")

    @roles.validator
    def _checkRoles(self, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
        unknown = set(value) - ROLES
        if not value or unknown:
            _fail(f"roles: expected a non-empty subset of {sorted(ROLES)}, got {list(value)}")

    @addresses.validator
    def _checkAddresses(self, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, dict) or len(value) > 64:
            _fail("addresses: expected a table of at most 64 entries")
        for name, address in value.items():
            if not isinstance(name, str) or not isinstance(address, str) or len(address) > 300:
                _fail(f"addresses: {name!r}: expected name = 'host:port'")

    @state.validator
    def _checkState(self, attribute: attrs.Attribute[Any], value: str) -> None:
        if value not in ("alive", "dead"):
            _fail(f"state: {value!r} is not 'alive' or 'dead'")


@_register
@attrs.define(frozen=True, slots=False)
class SessionRecord(_Record):
    """Which node holds a client's session, and how long it outlives a disconnect."""

    clientId: str = attrs.field(validator=_text)
    nodeId: str = attrs.field(validator=_nodeId)
    #: Session expiry interval in seconds (MQTT 5 semantics; 0xFFFFFFFF: never).
    expiryInterval: int = attrs.field(default=0, validator=_nonNegativeInt)
    #: Seconds since the epoch of the last claim.
    updatedAt: float = attrs.field(default=0.0, validator=_number)


@_register
@attrs.define(frozen=True, slots=False)
class RouteEntry(_Record):
    """One subscription filter and the nodes that have subscribers for it."""

    filter: str = attrs.field(validator=_text)
    nodeIds: tuple[str, ...] = attrs.field(
        converter=lambda v: tuple(sorted(set(_strTuple(v)))), factory=tuple
    )

    @nodeIds.validator
    def _checkNodes(self, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
        for nodeId in value:
            _nodeId(self, attribute, nodeId)


@_register
@attrs.define(frozen=True, slots=False)
class ShardRecord(_Record):
    """A shard and its leader node ("" when no live node can lead it)."""

    shard: str = attrs.field(validator=_text)
    leader: str = attrs.field(default="", validator=_optionalNodeId)
    #: Incremented each time leadership moves (fencing for the next leader).
    epoch: int = attrs.field(default=0, validator=_nonNegativeInt)
    #: Its data lives only on its leader (a local store): when the leader dies the
    #: shard keeps it (unavailable until it returns) instead of moving.
    pinned: bool = attrs.field(default=False)


@_register
@attrs.define(frozen=True, slots=False)
class ConfigEntry(_Record):
    """One cluster-wide configuration value (text; its reader parses it)."""

    key: str = attrs.field(validator=_text)
    value: str = attrs.field(default="", validator=_anyText)


@_register
@attrs.define(frozen=True, slots=False)
class GroupOffset(_Record):
    """A consumer group's committed offset in one shard."""

    group: str = attrs.field(validator=_text)
    shard: str = attrs.field(validator=_text)
    offset: int = attrs.field(default=0, validator=_nonNegativeInt)
    metadata: str = attrs.field(default="", validator=_anyText)


_ENCODER = json.JSONEncoder(separators=(",", ":"))


def encodeRecord(record: _Record) -> bytes:
    """The backend form of C{record}: compact JSON with its type name."""
    return _ENCODER.encode({"type": record.typeName, **record.getStateToCopy()}).encode()


def _fromState(state: Any, expected: type[R] | None) -> Any:
    """A record from its decoded JSON form; any registered type if C{expected} is None."""
    if not isinstance(state, dict):
        raise InvalidRecordError("not a stored record")
    typeName = state.pop("type", None)
    cls = _REGISTRY.get(typeName) if isinstance(typeName, str) else None
    if cls is None or (expected is not None and cls is not expected):
        raise InvalidRecordError(f"not a stored {expected.typeName if expected else 'record'}")
    try:
        return cls(**state)
    except TypeError as e:
        raise InvalidRecordError(f"{cls.typeName}: {e}") from None


def decodeRecord(data: bytes, expected: type[R]) -> R:
    """Rebuild (and validate) a record stored by L{encodeRecord}.

    @raise InvalidRecordError: not JSON, another type, or invalid fields.
    """
    try:
        state = json.loads(data)
    except ValueError as e:
        raise InvalidRecordError(f"not a stored record: {e}") from None
    return _fromState(state, expected)  # type: ignore[no-any-return]


def encodeBatch(encoded: Sequence[bytes]) -> list[bytes]:
    """Records already encoded by L{encodeRecord}, as one JSON array cut into
    pieces of at most L{BATCH_CHUNK} bytes (joined again by L{decodeBatch})."""
    data = b"[" + b",".join(encoded) + b"]"
    if len(data) <= BATCH_CHUNK:
        return [data]
    view = memoryview(data)
    return [bytes(view[i : i + BATCH_CHUNK]) for i in range(0, len(data), BATCH_CHUNK)]


def decodeBatch(chunks: Any, wanted: Callable[[Any], bool] | None = None) -> list[Any]:
    """The records of a batch made by L{encodeBatch}, in order, each validated
    (all of them before any is returned).

    @param wanted: given a record's type name, whether to build it (records
        of unwanted types are skipped without being validated).
    @raise InvalidRecordError: malformed batch or record.
    """
    if not isinstance(chunks, list | tuple) or not all(isinstance(c, bytes) for c in chunks):
        raise InvalidRecordError("a record batch is a list of byte strings")
    try:
        states = json.loads(b"".join(chunks))
    except ValueError as e:
        raise InvalidRecordError(f"not a record batch: {e}") from None
    if not isinstance(states, list):
        raise InvalidRecordError("not a record batch")
    return [
        _fromState(state, None)
        for state in states
        if wanted is None or not isinstance(state, dict) or wanted(state.get("type"))
    ]


class EncodedSnapshot(pb.Copyable):
    """What the leader answers a registration with: each section (see
    L{SNAPSHOT_SECTIONS}) as a batch of encoded records.  The registering
    node receives a L{Snapshot}."""

    def __init__(self, sections: dict[str, Sequence[bytes]]) -> None:
        self.sections = {name: encodeBatch(sections.get(name, ())) for name in SNAPSHOT_SECTIONS}

    def getTypeToCopy(self) -> bytes:
        return b"robustmq.placement.Snapshot"

    def getStateToCopy(self) -> dict[str, Any]:
        return self.sections


class Snapshot(dict[str, list[Any]], pb.RemoteCopy):
    """A received registration snapshot: C{{"nodes": [NodeInfo, ...],
    "routes": [RouteEntry, ...], "shards": [ShardRecord, ...],
    "config": [ConfigEntry, ...]}}, each record validated."""

    _types = {"nodes": NodeInfo, "routes": RouteEntry, "shards": ShardRecord, "config": ConfigEntry}

    def setCopyableState(self, state: Any) -> None:
        if not isinstance(state, dict):
            _fail("Snapshot: state is not a dict")
        state = {k.decode() if isinstance(k, bytes) else k: v for k, v in state.items()}
        for name in SNAPSHOT_SECTIONS:
            records = decodeBatch(state.get(name, [b"[]"]))
            cls = self._types[name]
            if not all(type(r) is cls for r in records):
                _fail(f"Snapshot: {name} holds records other than {cls.typeName}")
            self[name] = records


pb.setUnjellyableForClass(b"robustmq.placement.Snapshot", Snapshot)


__all__ = [
    "BATCH_CHUNK",
    "SNAPSHOT_SECTIONS",
    "ConfigEntry",
    "EncodedSnapshot",
    "GroupOffset",
    "NodeInfo",
    "RouteEntry",
    "SessionRecord",
    "ShardRecord",
    "Snapshot",
    "decodeBatch",
    "decodeRecord",
    "encodeBatch",
    "encodeRecord",
]
