"""Bans (by client id, user name, IP or CIDR, with an expiry) and flapping detection."""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict, deque
from typing import Any

from twisted.logger import Logger

from robustmq.core.security.metadata import IMetadataStore

KIND = "bans"
KINDS = ("clientid", "username", "ip")


class BanError(ValueError):
    """A ban cannot be added (bad kind or value, or the ban list is full)."""


def _normalise(kind: str, value: str) -> str:
    if kind not in KINDS:
        raise BanError(f"kind: {kind!r} must be one of {list(KINDS)}")
    if not isinstance(value, str) or not value:
        raise BanError("value: a non-empty string is required")
    if kind == "ip":
        try:
            return str(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise BanError(f"value: {value!r} is not an IP address or CIDR") from None
    return value


class Bans:
    """The ban list, kept in the metadata store so that a cluster shares it.

    Expired bans stop applying at once and are removed the next time they
    are looked at.  C{wallClock} gives Unix time (bans carry absolute expiry
    times, meaningful across restarts and nodes).
    """

    log = Logger()

    def __init__(self, metadata: IMetadataStore, maxBans: int, wallClock: Any = time.time) -> None:
        self.metadata = metadata
        self.maxBans = maxBans
        self.wallClock = wallClock
        self._networks: list[tuple[Any, str]] = []
        self._reload()
        metadata.watch(KIND, lambda kind, key, value: self._reload())

    def _reload(self) -> None:
        self._networks = [
            (ipaddress.ip_network(record["value"]), key)
            for key, record in self.metadata.items(KIND)
            if record["kind"] == "ip"
        ]

    def add(
        self,
        kind: str,
        value: str,
        duration: float | None = None,
        reason: str = "",
        by: str = "admin",
    ) -> dict[str, Any]:
        """Ban for C{duration} seconds (None: until removed); replaces an existing ban."""
        value = _normalise(kind, value)
        key = f"{kind}:{value}"
        if self.metadata.get(KIND, key) is None and self.metadata.count(KIND) >= self.maxBans:
            self._purge()
            if self.metadata.count(KIND) >= self.maxBans:
                raise BanError(f"the ban list is full ([limits] max_bans = {self.maxBans})")
        if duration is not None and duration <= 0:
            raise BanError("duration: must be positive (omit it for a ban without expiry)")
        now = self.wallClock()
        record = {
            "kind": kind,
            "value": value,
            "at": now,
            "until": None if duration is None else now + duration,
            "reason": reason,
            "by": by,
        }
        self.metadata.put(KIND, key, record)
        self.log.info(
            "banned {kind} {value} for {duration} ({reason})",
            kind=kind,
            value=value,
            duration="ever" if duration is None else f"{duration:g}s",
            reason=reason or "no reason given",
        )
        return record

    def delete(self, kind: str, value: str) -> bool:
        """Lift a ban; False if there was none."""
        key = f"{kind}:{_normalise(kind, value)}"
        if self.metadata.get(KIND, key) is None:
            return False
        self.metadata.delete(KIND, key)
        self.log.info("ban on {key} lifted", key=key)
        return True

    def list(self) -> list[dict[str, Any]]:
        """Bans in force."""
        self._purge()
        return [dict(record) for _, record in self.metadata.items(KIND)]

    def _purge(self) -> None:
        now = self.wallClock()
        for key, record in self.metadata.items(KIND):
            if record["until"] is not None and record["until"] <= now:
                self.metadata.delete(KIND, key)

    def _active(self, key: str) -> dict[str, Any] | None:
        record = self.metadata.get(KIND, key)
        if record is None:
            return None
        if record["until"] is not None and record["until"] <= self.wallClock():
            self.metadata.delete(KIND, key)
            return None
        return record

    def check(self, clientId: str | None, username: str | None, host: str | None) -> str | None:
        """Why the client is banned, or None."""
        if clientId and self._active(f"clientid:{clientId}") is not None:
            return f"client id {clientId} is banned"
        if username and self._active(f"username:{username}") is not None:
            return f"user {username} is banned"
        if host and self._networks:
            try:
                address: Any = ipaddress.ip_address(host.strip("[]"))
            except ValueError:
                return None
            address = getattr(address, "ipv4_mapped", None) or address
            for network, key in self._networks:
                if address.version == network.version and address in network:
                    if self._active(key) is not None:
                        return f"address {host} is banned ({network})"
        return None


class FlappingDetector:
    """Bans a client id that connects more than N times within a window.

    Keeps the recent connect times of at most C{flapping_max_clients} client
    ids; beyond that the least recently seen id is forgotten.
    """

    log = Logger()

    def __init__(self, settings: Any, bans: Bans, clock: Any) -> None:
        self.enabled = settings.flapping_enabled
        self.maxConnects = settings.flapping_max_connects
        self.window = settings.flapping_window
        self.banTime = settings.flapping_ban_time
        self.maxClients = settings.flapping_max_clients
        self.bans = bans
        self.clock = clock
        self.seen: OrderedDict[str, deque[float]] = OrderedDict()

    def connecting(self, clientId: str, kind: str = "clientid") -> bool:
        """Record a connect attempt; True if it makes the client a flapper (now banned).

        C{kind} says what C{clientId} is: a client id (MQTT), a user name or an
        address (Kafka and AMQP logins); the ban is of that kind.
        """
        if not self.enabled:
            return False
        now = self.clock.seconds()
        value = clientId
        clientId = clientId if kind == "clientid" else f"{kind}:{clientId}"
        times = self.seen.pop(clientId, None)
        if times is None:
            times = deque(maxlen=self.maxConnects + 1)
        self.seen[clientId] = times
        while len(self.seen) > self.maxClients:
            self.seen.popitem(last=False)
        times.append(now)
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) <= self.maxConnects:
            return False
        del self.seen[clientId]
        self.log.warn(
            "{kind} {clientId} connected {n} times within {window:g}s: banned for {ban:g}s",
            kind=kind,
            clientId=value,
            n=len(times),
            window=self.window,
            ban=self.banTime,
        )
        try:
            self.bans.add(kind, value, self.banTime, "flapping", by="flapping")
        except BanError as e:
            self.log.warn(
                "flapping client {clientId} not banned: {why}", clientId=clientId, why=str(e)
            )
        return True


__all__ = ["BanError", "Bans", "FlappingDetector", "KINDS"]
