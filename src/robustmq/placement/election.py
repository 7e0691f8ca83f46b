"""Leader election over any backend's compare-and-set, leases and watches.

An election is one key, C{_election/<name>}, holding the leader's candidate
string and attached to the leader's lease.  Campaigning is a
compare-and-set that succeeds only while the key does not exist (in etcd a
transaction on C{create_revision == 0}); a loser watches the key and tries
again when it is deleted, which happens when the leader resigns or its
lease ends.  Consensus is the backend's: this module only uses its atomic
operations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred

from robustmq.placement.kv import KeyValue

ELECTION_PREFIX = "_election/"


def electionKey(election: str) -> str:
    """The key that holds C{election}'s leader."""
    return f"{ELECTION_PREFIX}{election}"


class ElectionMixin:
    """C{campaign}/C{resign}/C{leader}/C{observe} for a backend that has
    C{compareAndSet}, C{get} and C{watch} (mixed into both backends)."""

    def campaign(self, election: str, candidate: str, lease: int) -> Deferred[None]:
        return ensureDeferred(self._campaign(election, candidate, lease))

    async def _campaign(self, election: str, candidate: str, lease: int) -> None:
        key = electionKey(election)
        mine = candidate.encode()
        while True:
            if await self.compareAndSet(key, None, mine, lease):  # type: ignore[attr-defined]
                return
            gone: Deferred[None] = Deferred()

            def onDelete(deleted: str, gone: Deferred[None] = gone) -> None:
                if deleted == key and not gone.called:
                    gone.callback(None)

            watcher = await self.watch(key, lambda kv: None, onDelete)  # type: ignore[attr-defined]
            try:
                current = await self.get(key)  # type: ignore[attr-defined]
                if current is not None and current.value == mine and current.lease == lease:
                    return
                if current is not None:
                    await gone
            finally:
                watcher.stop()

    def resign(self, election: str, candidate: str) -> Deferred[bool]:
        return self.compareAndSet(electionKey(election), candidate.encode(), None)  # type: ignore[attr-defined,no-any-return]

    def leader(self, election: str) -> Deferred[str | None]:
        async def read() -> str | None:
            kv = await self.get(electionKey(election))  # type: ignore[attr-defined]
            return None if kv is None else kv.value.decode()

        return ensureDeferred(read())

    def observe(self, election: str, callback: Callable[[str | None], Any]) -> Deferred[Any]:
        key = electionKey(election)

        def onPut(kv: KeyValue) -> None:
            if kv.key == key:
                callback(kv.value.decode())

        def onDelete(deleted: str) -> None:
            if deleted == key:
                callback(None)

        return self.watch(key, onPut, onDelete)  # type: ignore[attr-defined,no-any-return]


__all__ = ["ELECTION_PREFIX", "ElectionMixin", "electionKey"]
