"""Who delivers to a session that just moved between brokers (robustmq.cluster.moves).

Each broker has its own L{Moves}; a message reaches the brokers in its
targets.  Whatever the targets, exactly one broker acts for the session
(delivers it, or sends it on to where the session went) while the hand-over
window lasts; afterwards only the broker holding the session delivers.
"""

from __future__ import annotations

from itertools import combinations

import pytest
from twisted.internet.testing import MemoryReactorClock

from robustmq.cluster.moves import AllBut, Moves, routeKeys

WINDOW = 10.0
NODES = ("a", "b", "c", "d")


class Session:
    def __init__(self, clientId: str) -> None:
        self.clientId = clientId


class Cluster:
    """Four brokers' Moves and where one session is now."""

    def __init__(self) -> None:
        self.clock = MemoryReactorClock()
        self.moves = {n: Moves(n, WINDOW, 100, self.clock) for n in NODES}
        self.session = Session("x")
        self.holder = "a"

    def move(self, to: str) -> None:
        trail = self.moves[self.holder].depart("x", to, ["t/#", "$share/g/t/#"])
        self.moves[to].arrive("x", trail)
        self.holder = to

    def actors(self, targets: frozenset[str]) -> list[str]:
        """The brokers among C{targets} that deliver to the session or send it on."""
        acted = []
        for node in sorted(targets):
            moves = self.moves[node]
            if node == self.holder:
                skip = moves.answeredElsewhere(targets)
                if skip is None or self.session not in skip:
                    acted.append(node)
            elif any("x" in ids for ids in moves.redirects("t/1", targets).values()):
                acted.append(node)
        return acted


def everyTargetSet() -> list[frozenset[str]]:
    return [frozenset(c) for n in range(1, 5) for c in combinations(NODES, n)]


@pytest.mark.parametrize(
    "path",
    [["b"], ["b", "a"], ["b", "c"], ["b", "a", "b"], ["b", "c", "d", "a"], ["b", "a", "c", "a"]],
)
def test_exactlyOneBrokerActsForTheSessionWithinTheWindow(path: list[str]) -> None:
    cluster = Cluster()
    trailNodes = {"a"}
    for to in path:
        cluster.clock.advance(0.5)
        cluster.move(to)
        trailNodes.add(to)
    for targets in everyTargetSet():
        acted = cluster.actors(targets)
        expected = 1 if targets & trailNodes else 0
        assert len(acted) == expected, (path, sorted(targets), acted)


def test_afterTheWindowOnlyTheHolderDelivers() -> None:
    cluster = Cluster()
    cluster.move("b")
    cluster.clock.advance(WINDOW + 0.1)
    for targets in everyTargetSet():
        assert cluster.actors(targets) == (["b"] if "b" in targets else [])
    assert not cluster.moves["a"] and not cluster.moves["b"]  # entries expired


def test_redirectFollowsTheSessionAndSharedGroups() -> None:
    cluster = Cluster()
    cluster.move("b")
    cluster.move("c")
    a, b = cluster.moves["a"], cluster.moves["b"]
    assert a.redirects("t/1", {"a"}) == {"b": ["x"]}
    assert a.redirects("u/1", {"a"}) == {}  # not its filter
    assert b.nextHop("x") == "c"  # a redirected message goes on from b to c
    assert a.sharedRedirect("$share/g/t/#") == "b"
    assert a.sharedRedirect("$share/h/t/#") is None
    cluster.move("a")  # back: a holds it again, nothing to send on
    assert a.redirects("t/1", {"a"}) == {} and a.nextHop("x") is None


def test_boundedTables() -> None:
    clock = MemoryReactorClock()
    moves = Moves("a", WINDOW, 3, clock)
    for i in range(5):
        moves.depart(f"c{i}", "b", ["t"])
        moves.arrive(f"d{i}", [("b", 5.0)])
    assert list(moves.departed) == ["c2", "c3", "c4"]
    assert list(moves.arrived) == ["d2", "d3", "d4"]
    assert set(moves.redirects("t", {"a"})["b"]) == {"c2", "c3", "c4"}


def test_helpers() -> None:
    assert routeKeys(["a/#", "$share/g/b", "$queue/c", "a/#", "$exclusive/d"]) == (
        ["a/#", "d"],
        ["$share/g/b", "$share/$queue/c"],
    )
    one, other = Session("1"), Session("2")
    assert one not in AllBut(one) and other in AllBut(one)
