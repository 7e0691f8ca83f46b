"""Why an MQTT connection is closed for bad input."""

from __future__ import annotations


class MQTTError(Exception):
    """Bad input from a peer: the connection that sent it is closed.

    @ivar reason: what was wrong, for the log line.
    @ivar statement: the normative statement id it breaks (e.g. C{MQTT-3.3.1-4}), if any.
    """

    #: MQTT 5 reason code sent in DISCONNECT before closing.
    reasonCode = 0x81

    def __init__(self, reason: str, statement: str | None = None) -> None:
        super().__init__(reason if statement is None else f"{reason} [{statement}]")
        self.reason = reason
        self.statement = statement


class MalformedPacket(MQTTError):
    """The bytes do not form a valid packet."""

    reasonCode = 0x81


class ProtocolViolation(MQTTError):
    """A well-formed packet that the protocol forbids here."""

    reasonCode = 0x82


class PacketTooLarge(MQTTError):
    """A packet larger than the configured maximum."""

    reasonCode = 0x95


class TopicNameInvalid(ProtocolViolation):
    """A topic name beyond the configured length or level limits."""

    reasonCode = 0x90


class TopicAliasInvalid(ProtocolViolation):
    """A Topic Alias of 0 or above the maximum the broker sent (MQTT-3.3.2-8/-9)."""

    reasonCode = 0x94


class Refused(MQTTError):
    """A well-formed packet the broker refuses with a specific 5.0 reason code."""

    def __init__(self, reasonCode: int, reason: str) -> None:
        super().__init__(reason)
        self.reasonCode = reasonCode
