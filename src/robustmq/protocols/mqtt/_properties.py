"""MQTT 5.0 properties (section 2.2.2): one table drives parsing, validation and encoding.

Properties are held as a dict from the property's snake_case name to its
value.  User Property is a list of (name, value) pairs; Subscription
Identifier in a PUBLISH is a list of ints.  Everything else is a scalar.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from robustmq.protocols.mqtt._exceptions import (
    MalformedPacket,
    ProtocolViolation,
    TopicAliasInvalid,
)
from robustmq.protocols.mqtt._packets import (
    AUTH,
    CONNACK,
    CONNECT,
    DISCONNECT,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    SUBACK,
    SUBSCRIBE,
    UNSUBACK,
    UNSUBSCRIBE,
)
from robustmq.protocols.mqtt._primitives import encodeVarint, readUtf8, readVarint

# Pseudo packet type for the will properties inside CONNECT.
WILL = 100

BYTE, U16, U32, VARINT, UTF8, BINARY, PAIR = range(7)

_ACKS = {PUBACK, PUBREC, PUBREL, PUBCOMP}
_EVERY = {
    CONNECT,
    CONNACK,
    PUBLISH,
    WILL,
    SUBSCRIBE,
    SUBACK,
    UNSUBSCRIBE,
    UNSUBACK,
    DISCONNECT,
    AUTH,
} | _ACKS

# id: (name, type, packets where allowed)
PROPERTIES: dict[int, tuple[str, int, set[int]]] = {
    0x01: ("payload_format_indicator", BYTE, {PUBLISH, WILL}),
    0x02: ("message_expiry_interval", U32, {PUBLISH, WILL}),
    0x03: ("content_type", UTF8, {PUBLISH, WILL}),
    0x08: ("response_topic", UTF8, {PUBLISH, WILL}),
    0x09: ("correlation_data", BINARY, {PUBLISH, WILL}),
    0x0B: ("subscription_identifier", VARINT, {PUBLISH, SUBSCRIBE}),
    0x11: ("session_expiry_interval", U32, {CONNECT, CONNACK, DISCONNECT}),
    0x12: ("assigned_client_identifier", UTF8, {CONNACK}),
    0x13: ("server_keep_alive", U16, {CONNACK}),
    0x15: ("authentication_method", UTF8, {CONNECT, CONNACK, AUTH}),
    0x16: ("authentication_data", BINARY, {CONNECT, CONNACK, AUTH}),
    0x17: ("request_problem_information", BYTE, {CONNECT}),
    0x18: ("will_delay_interval", U32, {WILL}),
    0x19: ("request_response_information", BYTE, {CONNECT}),
    0x1A: ("response_information", UTF8, {CONNACK}),
    0x1C: ("server_reference", UTF8, {CONNACK, DISCONNECT}),
    0x1F: ("reason_string", UTF8, {CONNACK, SUBACK, UNSUBACK, DISCONNECT, AUTH} | _ACKS),
    0x21: ("receive_maximum", U16, {CONNECT, CONNACK}),
    0x22: ("topic_alias_maximum", U16, {CONNECT, CONNACK}),
    0x23: ("topic_alias", U16, {PUBLISH}),
    0x24: ("maximum_qos", BYTE, {CONNACK}),
    0x25: ("retain_available", BYTE, {CONNACK}),
    0x26: ("user_property", PAIR, _EVERY),
    0x27: ("maximum_packet_size", U32, {CONNECT, CONNACK}),
    0x28: ("wildcard_subscription_available", BYTE, {CONNACK}),
    0x29: ("subscription_identifier_available", BYTE, {CONNACK}),
    0x2A: ("shared_subscription_available", BYTE, {CONNACK}),
}

IDS = {name: pid for pid, (name, _, _) in PROPERTIES.items()}

# Values the standard restricts (name: (allowed set or None, minimum)).
_ZERO_OR_ONE = {
    "payload_format_indicator",
    "request_problem_information",
    "request_response_information",
    "maximum_qos",
    "retain_available",
    "wildcard_subscription_available",
    "subscription_identifier_available",
    "shared_subscription_available",
}
_NOT_ZERO = {"receive_maximum", "maximum_packet_size", "topic_alias", "subscription_identifier"}

_unpackU16 = struct.Struct("!H").unpack_from
_unpackU32 = struct.Struct("!I").unpack_from


_V5_UTF8 = ("MQTT-1.5.4-1", "MQTT-1.5.4-2")


def _readUtf8(data: bytes, pos: int, end: int, what: str) -> tuple[str, int]:
    return readUtf8(data, pos, end, what, _V5_UTF8)


def readProperties(data: bytes, pos: int, end: int, packetType: int) -> tuple[dict[str, Any], int]:
    """Parse a property block at C{pos} for C{packetType}; returns (properties, next position).

    A property twice (other than User Property, or Subscription Identifier in
    PUBLISH), a property not allowed in this packet, or a forbidden value is a
    protocol error (section 2.2.2.2).
    """
    length, pos = readVarint(data, pos, end)
    stop = pos + length
    if stop > end:
        raise MalformedPacket("properties run past the packet end")
    props: dict[str, Any] = {}
    while pos < stop:
        pid, pos = readVarint(data, pos, stop)
        entry = PROPERTIES.get(pid)
        if entry is None:
            raise MalformedPacket(f"unknown property id {pid:#x}")
        name, kind, allowed = entry
        if packetType not in allowed:
            raise ProtocolViolation(f"property {name} is not allowed in this packet")
        value: Any
        if kind == BYTE:
            if pos >= stop:
                raise MalformedPacket(f"{name}: truncated")
            value = data[pos]
            pos += 1
        elif kind == U16:
            if pos + 2 > stop:
                raise MalformedPacket(f"{name}: truncated")
            value = _unpackU16(data, pos)[0]
            pos += 2
        elif kind == U32:
            if pos + 4 > stop:
                raise MalformedPacket(f"{name}: truncated")
            value = _unpackU32(data, pos)[0]
            pos += 4
        elif kind == VARINT:
            value, pos = readVarint(data, pos, stop)
        elif kind == UTF8:
            value, pos = _readUtf8(data, pos, stop, name)
        elif kind == BINARY:
            if pos + 2 > stop:
                raise MalformedPacket(f"{name}: truncated")
            n = _unpackU16(data, pos)[0]
            if pos + 2 + n > stop:
                raise MalformedPacket(f"{name}: runs past the properties")
            value = data[pos + 2 : pos + 2 + n]
            pos += 2 + n
        else:
            key, pos = _readUtf8(data, pos, stop, name)
            val, pos = _readUtf8(data, pos, stop, name)
            props.setdefault(name, []).append((key, val))
            continue
        if name in _ZERO_OR_ONE and value not in (0, 1):
            raise ProtocolViolation(f"{name} must be 0 or 1, not {value}")
        if name in _NOT_ZERO and value == 0:
            if name == "topic_alias":
                raise TopicAliasInvalid("Topic Alias 0", "MQTT-3.3.2-8")
            raise ProtocolViolation(f"{name} must not be 0")
        if name == "subscription_identifier" and packetType == PUBLISH:
            props.setdefault(name, []).append(value)
            continue
        if name in props:
            raise ProtocolViolation(f"property {name} appears twice", "MQTT-2.2.2-2")
        props[name] = value
    return props, stop


_packU16 = struct.Struct("!H").pack
_packU32 = struct.Struct("!I").pack


def _utf8(s: str) -> bytes:
    b = s.encode("utf-8")
    return _packU16(len(b)) + b


def encodeProperties(props: Mapping[str, Any] | None) -> bytes:
    """A property block (length + properties); empty properties encode as b'\\x00'."""
    if not props:
        return b"\x00"
    parts: list[bytes] = []
    for name, value in props.items():
        if value is None:
            continue
        pid = IDS[name]
        kind = PROPERTIES[pid][1]
        prefix = encodeVarint(pid)
        if kind == PAIR:
            for k, v in value:
                parts.append(prefix + _utf8(k) + _utf8(v))
        elif kind == VARINT:
            for v in value if isinstance(value, list) else (value,):
                parts.append(prefix + encodeVarint(v))
        elif kind == BYTE:
            parts.append(prefix + bytes((value,)))
        elif kind == U16:
            parts.append(prefix + _packU16(value))
        elif kind == U32:
            parts.append(prefix + _packU32(value))
        elif kind == UTF8:
            parts.append(prefix + _utf8(value))
        else:
            parts.append(prefix + _packU16(len(value)) + bytes(value))
    body = b"".join(parts)
    return encodeVarint(len(body)) + body
