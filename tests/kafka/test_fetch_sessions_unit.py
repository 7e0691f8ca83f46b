"""FetchSessionCache alone (KIP-227 rules and its bound), no sockets."""

from __future__ import annotations

from robustmq.protocols.kafka import _errors as E
from robustmq.protocols.kafka._fetchsessions import FetchPartition, FetchSessionCache


def _p(topic: str, index: int, offset: int = 0) -> FetchPartition:
    return FetchPartition(topic, None, index, offset, 1 << 20)


def test_openIncrementalClose() -> None:
    cache = FetchSessionCache(4)
    code, session, parts = cache.resolve(0, 0, [_p("t", 0), _p("t", 1)], [])
    assert code == E.NONE and session is not None and len(parts) == 2
    sid = session.sessionId
    code, session, parts = cache.resolve(sid, 1, [_p("t", 0, 5)], [("t", 1)])
    assert code == E.NONE and [(p.index, p.fetchOffset) for p in parts] == [(0, 5)]
    assert cache.resolve(sid, 1, [], [])[0] == E.INVALID_FETCH_SESSION_EPOCH
    code, session, parts = cache.resolve(sid, -1, [_p("u", 0)], [])
    assert code == E.NONE and session is None and [p.topic for p in parts] == ["u"]
    assert cache.resolve(sid, 2, [], [])[0] == E.FETCH_SESSION_ID_NOT_FOUND


def test_boundEvictsLeastRecentlyUsed() -> None:
    cache = FetchSessionCache(2)
    ids = [cache.resolve(0, 0, [_p("t", i)], [])[1].sessionId for i in range(2)]
    assert cache.resolve(ids[0], 1, [], [])[0] == E.NONE  # ids[0] is now the most recent
    cache.resolve(0, 0, [_p("t", 9)], [])  # a third: ids[1] is evicted
    assert len(cache) == 2
    assert cache.resolve(ids[1], 1, [], [])[0] == E.FETCH_SESSION_ID_NOT_FOUND
    assert cache.resolve(ids[0], 2, [], [])[0] == E.NONE


def test_noSessionsWhenDisabled() -> None:
    code, session, parts = FetchSessionCache(0).resolve(0, 0, [_p("t", 0)], [])
    assert code == E.NONE and session is None and len(parts) == 1
