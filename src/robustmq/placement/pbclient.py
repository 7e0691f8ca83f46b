"""Helpers for Perspective Broker connections made by a L{ClientService}.

Both the placement client and the broker-to-broker links log in from
C{prepareConnection}; two Twisted behaviours need care there:

- a connection that drops before the login answers leaves
  C{PBClientFactory.login} waiting forever (endpoints never call
  C{clientConnectionLost}): L{failLoginOnDisconnect} fails it instead;
- when C{prepareConnection} fails, ClientService counts the attempt as failed
  (the back-off grows) but leaves the connection open, and its state machine
  has no transition for that connection's later loss: L{dropFailedConnection}
  closes it without notifying the machine."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure
from twisted.spread import pb


def failLoginOnDisconnect(broker: pb.Broker) -> Callable[[], None]:
    """Make a pending login fail if C{broker}'s connection drops; returns the notifier
    (remove it with C{broker.dontNotifyOnDisconnect} once logged in)."""
    factory = broker.factory

    def lost() -> None:
        factory.clientConnectionLost(None, Failure(ConnectionLost("lost before login")), 0)

    broker.notifyOnDisconnect(lost)
    return lost


def dropFailedConnection(broker: pb.Broker) -> None:
    """Close the connection of a failed C{prepareConnection} behind ClientService's back."""
    if hasattr(broker, "_lostNotification"):
        broker._lostNotification = lambda reason: None
    transport = getattr(broker, "transport", None)
    if transport is not None:
        transport.loseConnection()


__all__ = ["dropFailedConnection", "failLoginOnDisconnect"]
