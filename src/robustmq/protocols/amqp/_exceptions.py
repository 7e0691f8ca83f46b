"""AMQP errors that close a channel or a connection with a reply code."""

from __future__ import annotations

from robustmq.protocols.amqp import _spec

__all__ = ["AMQPError", "ChannelError", "ConnectionError"]


class AMQPError(Exception):
    """A protocol exception carrying the reply code and text RabbitMQ would send.

    @ivar code: the reply code, e.g. 404 (NOT_FOUND).
    @ivar text: the reply text, starting with the code's name as RabbitMQ's does.
    """

    def __init__(self, code: int, text: str, classId: int = 0, methodId: int = 0) -> None:
        super().__init__(text)
        self.code = code
        self.text = text[:255]
        self.classId = classId
        self.methodId = methodId

    @property
    def hard(self) -> bool:
        """True when the code is a connection (hard) error."""
        return self.code in _spec.HARD_ERRORS


class ChannelError(AMQPError):
    """Closes the channel (a soft error: 403, 404, 405, 406)."""


class ConnectionError(AMQPError):  # noqa: A001 - mirrors the AMQP term
    """Closes the connection (a hard error: 320, 501-506, 530, 540, 541)."""


def notFound(what: str, name: str, vhost: str) -> ChannelError:
    """RabbitMQ's 404 text for a missing exchange or queue."""
    return ChannelError(_spec.NOT_FOUND, f"NOT_FOUND - no {what} '{name}' in vhost '{vhost}'")


def preconditionFailed(text: str) -> ChannelError:
    """A 406 PRECONDITION_FAILED channel error."""
    return ChannelError(_spec.PRECONDITION_FAILED, f"PRECONDITION_FAILED - {text}")


def resourceLocked(name: str, vhost: str) -> ChannelError:
    """RabbitMQ's 405 text for another connection's exclusive queue."""
    return ChannelError(
        _spec.RESOURCE_LOCKED,
        f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{name}' in vhost "
        f"'{vhost}'. It could be originally declared on another connection or the exclusive "
        "property value does not match that of the original declaration.",
    )


def accessRefused(text: str) -> ChannelError:
    """A 403 ACCESS_REFUSED channel error."""
    return ChannelError(_spec.ACCESS_REFUSED, f"ACCESS_REFUSED - {text}")
