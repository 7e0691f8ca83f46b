"""`robustmq ctl cluster status` and `GET /api/v1/cluster`.

Against a real single node (no cluster): the route answers 404 and the
command exits 5 with a message saying so.  The admin service's handling of a
route that answers later (a Deferred: on time, too late, failing, or with the
client gone) is checked in process, over real loopback HTTP, against a real
broker whose C{cluster} only answers C{status()}.  The multi-node run of the
command lives with the cluster tests, which can reuse L{parseClusterTable}.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import treq
from adminhelpers import AdminNode
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool, ResponseNeverReceived

from robustmq.admin import AdminService
from robustmq.admin._api import CLUSTER_STATUS_TIMEOUT
from robustmq.ctl import renderCluster
from robustmq.testing.memory import InMemoryBroker

ROBUSTMQ = str(Path(sys.executable).with_name("robustmq"))


def parseClusterTable(text: str) -> list[dict[str, Any]]:
    """The rows of C{robustmq ctl cluster status}'s table, typed as the API's members.

    Columns are found from the header's positions (cells such as the uptime
    contain spaces); the footer line is ignored.  C{roles} becomes a list,
    C{clients} an int, empty cells None; C{uptime} stays the displayed text.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    header = next(i for i, line in enumerate(lines) if line.startswith("NODE"))
    starts = [m.start() for m in re.finditer(r"\S+", lines[header])]
    names = [m.group().lower() for m in re.finditer(r"\S+", lines[header])]
    rows = []
    for line in lines[header + 1 :]:
        if line.startswith("("):
            break
        bounds = [*starts[1:], None]
        cells = [line[a:b].strip() for a, b in zip(starts, bounds, strict=True)]
        row: dict[str, Any] = {k: (v or None) for k, v in zip(names, cells, strict=True)}
        row["roles"] = row["roles"].split(",") if row["roles"] else []
        row["clients"] = int(row["clients"]) if row["clients"] is not None else None
        rows.append(row)
    return rows


def ctl(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ROBUSTMQ, "ctl", "--url", url, *args], capture_output=True, text=True, timeout=30
    )


@pytest.fixture(scope="module")
def single() -> Iterator[AdminNode]:
    """One node with the admin API and [cluster] off."""
    n = AdminNode().start()
    try:
        yield n
    finally:
        n.stop()


def test_single_node_is_not_in_a_cluster(single: AdminNode) -> None:
    status, body = single.json("GET", "/api/v1/cluster")
    assert status == 404
    assert body == {"error": {"code": 404, "message": "this node is not in a cluster"}}
    for args in (("cluster", "status"), ("cluster",), ("--json", "cluster", "status")):
        result = ctl(single.url, *args)
        assert result.returncode == 5, (args, result.stderr)
        assert "this node is not in a cluster" in result.stderr
        assert "[cluster] enabled = false" in result.stderr
        assert result.stdout == ""


def test_unknown_action_is_a_usage_error(single: AdminNode) -> None:
    result = ctl(single.url, "cluster", "join")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


MEMBERS = [
    {
        "node": "broker-2",
        "roles": ["broker"],
        "state": "dead",
        "address": "127.0.0.1:1884",
        "started_at": 1_700_000_100.0,
        "uptime": None,
        "clients": None,
    },
    {
        "node": "broker-1",
        "roles": ["broker"],
        "state": "alive",
        "address": "127.0.0.1:1883",
        "started_at": 1_700_000_000.0,
        "uptime": 3725.5,
        "clients": 17,
    },
    {
        "node": "placement-1",
        "roles": ["placement"],
        "state": "alive",
        "address": "127.0.0.1:1228",
        "started_at": 1_700_000_000.0,
        "uptime": 42.0,
        "clients": None,
    },
]


def test_table_renders_and_parses_back() -> None:
    table = renderCluster(MEMBERS)
    lines = table.splitlines()
    assert lines[0].split() == ["NODE", "ROLES", "STATE", "ADDRESS", "UPTIME", "CLIENTS"]
    assert lines[-1] == "(3 node(s): 2 alive, 1 dead)"
    rows = parseClusterTable(table)
    assert [r["node"] for r in rows] == ["broker-2", "broker-1", "placement-1"]
    assert rows[1] == {
        "node": "broker-1",
        "roles": ["broker"],
        "state": "alive",
        "address": "127.0.0.1:1883",
        "uptime": "1h 2m 5s",
        "clients": 17,
    }
    assert rows[0]["uptime"] is None and rows[0]["clients"] is None
    assert rows[2]["uptime"] == "0m 42s"
    several = renderCluster([{**MEMBERS[1], "roles": ["placement", "broker"]}])
    assert parseClusterTable(several)[0]["roles"] == ["placement", "broker"]
    assert parseClusterTable(renderCluster([])) == []


class StatusOnlyCluster:
    """Stands in for the node's ClusterNode where the admin API meets it: C{status()}."""

    def __init__(self) -> None:
        self.answers: list[defer.Deferred[list[dict[str, Any]]]] = []
        self.cancelled = 0
        self.asked: defer.Deferred[None] = defer.Deferred()

    def status(self) -> defer.Deferred[list[dict[str, Any]]]:
        def cancel(d: defer.Deferred[Any]) -> None:
            self.cancelled += 1

        d: defer.Deferred[list[dict[str, Any]]] = defer.Deferred(cancel)
        self.answers.append(d)
        asked, self.asked = self.asked, defer.Deferred()
        # On the next turn: by then the route has set its timeout on d.
        reactor.callLater(0, asked.callback, None)
        return d


class DeferredRouteTests(TestCase):
    """C{GET /api/v1/cluster} answered when the cluster's Deferred fires, over real HTTP."""

    timeout = 30

    def setUp(self) -> None:
        self.harness = InMemoryBroker({"http": {"port": 0, "bind": "127.0.0.1"}})
        self.cluster = StatusOnlyCluster()
        self.harness.broker.cluster = self.cluster
        # HTTP on the real reactor; the broker (and the 504 timer) on the harness's clock.
        self.admin = AdminService(self.harness.settings, self.harness.broker, [], reactor)
        self.admin.startService()
        self.addCleanup(self.admin.stopService)
        address = self.admin.address()
        assert address is not None
        self.url = f"http://127.0.0.1:{address[1]}/api/v1/cluster"
        self.pool = HTTPConnectionPool(reactor, persistent=False)

    def request(self) -> defer.Deferred[Any]:
        return treq.get(self.url, pool=self.pool)

    async def get(self) -> tuple[int, Any]:
        response = await self.request()
        return response.code, await treq.json_content(response)

    def test_answers_when_the_cluster_does(self) -> defer.Deferred[None]:
        async def run() -> None:
            asked = self.cluster.asked
            pending = defer.ensureDeferred(self.get())
            await asked
            self.assertFalse(pending.called)
            self.cluster.answers[0].callback(MEMBERS)
            code, body = await pending
            self.assertEqual(code, 200)
            self.assertEqual(
                [m["node"] for m in body["data"]], ["broker-1", "broker-2", "placement-1"]
            )
            self.assertEqual(body["data"][0], MEMBERS[1])

        return defer.ensureDeferred(run())

    def test_a_silent_cluster_is_a_504(self) -> defer.Deferred[None]:
        async def run() -> None:
            asked = self.cluster.asked
            pending = defer.ensureDeferred(self.get())
            await asked
            self.harness.clock.advance(CLUSTER_STATUS_TIMEOUT)
            code, body = await pending
            self.assertEqual(code, 504)
            self.assertIn("did not answer within", body["error"]["message"])
            self.assertEqual(self.cluster.cancelled, 1)

        return defer.ensureDeferred(run())

    def test_a_failing_cluster_is_a_logged_500(self) -> defer.Deferred[None]:
        async def run() -> None:
            asked = self.cluster.asked
            pending = defer.ensureDeferred(self.get())
            await asked
            self.cluster.answers[0].errback(ValueError("placement unreachable"))
            code, body = await pending
            self.assertEqual(code, 500)
            self.assertEqual(body["error"]["message"], "internal error (see node log)")
            self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

        return defer.ensureDeferred(run())

    def test_a_client_that_goes_away_cancels_the_question(self) -> defer.Deferred[None]:
        async def run() -> None:
            asked = self.cluster.asked
            request = self.request()
            await asked
            request.cancel()
            with self.assertRaises(ResponseNeverReceived):
                await request
            for _ in range(200):
                if self.cluster.cancelled:
                    break
                await deferLater(reactor, 0.01, lambda: None)
            self.assertEqual(self.cluster.cancelled, 1)
            # The node still answers afterwards.
            asked = self.cluster.asked
            pending = defer.ensureDeferred(self.get())
            await asked
            self.cluster.answers[1].callback([])
            self.assertEqual(await pending, (200, {"data": []}))

        return defer.ensureDeferred(run())
