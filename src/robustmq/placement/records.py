"""The records that cross Perspective Broker and live in the placement backend.

Each record is an attrs class that is both a L{pb.Copyable} (sent by value)
and a L{pb.RemoteCopy} (rebuilt on the other side) registered under a
stable name, C{"robustmq.placement.<Class>"}: renaming or moving a module
does not change the wire.  A received record is re-validated by running the
attrs validators again (L{_Record.setCopyableState}), so a peer cannot hand
over a record that this side could not have built.

The same records are stored in the backend as JSON (L{encodeRecord},
L{decodeRecord}): C{{"type": "<Class>", ...fields}}.
"""

from __future__ import annotations

import json
import re
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

    def getStateToCopy(self) -> dict[str, Any]:
        return attrs.asdict(self, recurse=False)  # type: ignore[arg-type]

    def setCopyableState(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict):
            _fail(f"{self.typeName}: state is not a dict")
        try:
            self.__init__(**state)  # type: ignore[misc]
        except TypeError as e:
            raise InvalidRecordError(f"{self.typeName}: {e}") from None


def _register(cls: type[R]) -> type[R]:
    cls.typeName = cls.__name__
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


def encodeRecord(record: _Record) -> bytes:
    """The backend form of C{record}: compact JSON with its type name."""
    return json.dumps(
        {"type": record.typeName, **record.getStateToCopy()}, separators=(",", ":")
    ).encode()


def decodeRecord(data: bytes, expected: type[R]) -> R:
    """Rebuild (and validate) a record stored by L{encodeRecord}.

    @raise InvalidRecordError: not JSON, another type, or invalid fields.
    """
    try:
        state = json.loads(data)
    except ValueError as e:
        raise InvalidRecordError(f"not a stored record: {e}") from None
    if not isinstance(state, dict) or state.pop("type", None) != expected.typeName:
        raise InvalidRecordError(f"not a stored {expected.typeName}")
    try:
        return expected(**state)
    except TypeError as e:
        raise InvalidRecordError(f"{expected.typeName}: {e}") from None


__all__ = [
    "ConfigEntry",
    "GroupOffset",
    "NodeInfo",
    "RouteEntry",
    "SessionRecord",
    "ShardRecord",
    "decodeRecord",
    "encodeRecord",
]
