"""
Incremental fetch sessions (KIP-227).

A consumer's first Fetch with C{session_id = 0, session_epoch = 0} opens a
session holding the partitions it asked for and their fetch offsets.  Its
later Fetches name the session and the next epoch and list only the
partitions whose fetch offset or size changed (plus C{forgotten_topics_data}
to drop some); the response lists only partitions with records, an error,
or a changed high watermark, last stable offset or log start offset.

Sessions live on the node (not the connection), at most
C{[kafka] max_fetch_sessions} of them; when full, the least recently used
one is evicted and its client's next incremental Fetch gets
FETCH_SESSION_ID_NOT_FOUND, after which it opens a new session.
"""

from __future__ import annotations

import random
from collections import OrderedDict

from robustmq.protocols.kafka import _errors as E

__all__ = ["FINAL_EPOCH", "FetchPartition", "FetchSession", "FetchSessionCache"]

#: session_epoch -1: a full fetch without (or closing) a session
FINAL_EPOCH = -1


class FetchPartition:
    """One partition of a Fetch: what the client asked, what it was last told."""

    __slots__ = ("topic", "topicId", "index", "fetchOffset", "maxBytes", "hw", "lso", "start")

    def __init__(
        self, topic: str, topicId: object, index: int, fetchOffset: int, maxBytes: int
    ) -> None:
        self.topic = topic
        self.topicId = topicId
        self.index = index
        self.fetchOffset = fetchOffset
        self.maxBytes = maxBytes
        #: the high watermark, last stable offset and log start last sent (-2: never)
        self.hw = self.lso = self.start = -2


class FetchSession:
    """The partitions of one incremental fetch session, in the order they were added."""

    __slots__ = ("sessionId", "epoch", "partitions")

    def __init__(self, sessionId: int) -> None:
        self.sessionId = sessionId
        #: the epoch the next incremental request must carry
        self.epoch = 1
        self.partitions: OrderedDict[tuple[str, int], FetchPartition] = OrderedDict()

    def update(self, changed: list[FetchPartition], forgotten: list[tuple[str, int]]) -> None:
        """Apply an incremental request's changes."""
        for key in forgotten:
            self.partitions.pop(key, None)
        for fp in changed:
            old = self.partitions.get((fp.topic, fp.index))
            if old is None:
                self.partitions[(fp.topic, fp.index)] = fp
            else:
                old.fetchOffset = fp.fetchOffset
                old.maxBytes = fp.maxBytes

    def nextEpoch(self) -> None:
        self.epoch = 1 if self.epoch >= 0x7FFFFFFF else self.epoch + 1


class FetchSessionCache:
    """The node's fetch sessions, bounded, least recently used evicted first."""

    def __init__(self, maxSessions: int) -> None:
        self.maxSessions = maxSessions
        self._sessions: OrderedDict[int, FetchSession] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def resolve(
        self,
        sessionId: int,
        epoch: int,
        changed: list[FetchPartition],
        forgotten: list[tuple[str, int]],
    ) -> tuple[int, FetchSession | None, list[FetchPartition]]:
        """C{(error, session, partitions to fetch)} for one Fetch request (KIP-227 rules).

        Without a session (or closing one) the partitions are those of the
        request; a new session starts with them; an incremental request gets
        the session's partitions after applying its changes.
        """
        if sessionId and epoch in (0, FINAL_EPOCH):
            self._sessions.pop(sessionId, None)  # the client closes its session
        if epoch == FINAL_EPOCH:
            return E.NONE, None, changed
        if epoch == 0:
            if self.maxSessions <= 0:
                return E.NONE, None, changed
            fresh = FetchSession(self._newId())
            fresh.update(changed, [])
            self._sessions[fresh.sessionId] = fresh
            while len(self._sessions) > self.maxSessions:
                self._sessions.popitem(last=False)
            return E.NONE, fresh, list(fresh.partitions.values())
        session = self._sessions.get(sessionId)
        if session is None:
            return E.FETCH_SESSION_ID_NOT_FOUND, None, []
        if epoch != session.epoch:
            return E.INVALID_FETCH_SESSION_EPOCH, None, []
        self._sessions.move_to_end(sessionId)
        session.update(changed, forgotten)
        session.nextEpoch()
        return E.NONE, session, list(session.partitions.values())

    def forgetTopic(self, topic: str) -> None:
        """A topic was deleted: drop its partitions from every session."""
        for session in self._sessions.values():
            for key in [k for k in session.partitions if k[0] == topic]:
                del session.partitions[key]

    def _newId(self) -> int:
        while True:
            sid = random.randint(1, 0x7FFFFFFF)
            if sid not in self._sessions:
                return sid
