"""The replica side of session replication, on a real segment store (no broker)."""

from __future__ import annotations

import json
import shutil
import tempfile
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from robustmq.cluster import wire
from robustmq.cluster.replication import RESET, WILLS, ReplicaStore
from robustmq.config import settingsFromMapping
from robustmq.core.message import Message
from robustmq.core.persistence import MESSAGES, SESSIONS, deliveryValue, encodeMessage
from robustmq.interfaces import IShardStorePlugin
from robustmq.registry import findPlugin


def sessionRow(clientId: str, subs: dict[str, Any] | None = None) -> bytes:
    record = {"expiry": 300, "offline": 1.0, "seq": 5, "subs": subs or {}}
    return wire.encodeOp(wire.UPSERT, SESSIONS, clientId.encode(), json.dumps(record).encode())


class ReplicaStoreTests(TestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        directory = tempfile.mkdtemp(prefix="robustmq-replica-")
        self.addCleanup(shutil.rmtree, directory, True)
        settings = settingsFromMapping({"storage": {"backend": "segment", "data_dir": directory}})
        self.store = findPlugin(IShardStorePlugin, "segment", "storage.backend").build(
            settings, reactor
        )
        await defer.maybeDeferred(self.store.open)
        self.addCleanup(lambda: defer.maybeDeferred(self.store.close))
        self.replicas = ReplicaStore(self.store)

    async def test_batchesApplyInOrderAndResetClearsEarlierRows(self) -> None:
        message = Message("t/1", b"held", 1, False, 1.0)
        held = deliveryValue(message, 1, None, 0, 0)
        first = self.replicas.apply(
            "b2",
            [
                sessionRow("old"),
                wire.encodeOp(wire.UPSERT, MESSAGES, b"old\x00" + b"%016x" % 1, held),
            ],
        )
        # A full copy: reset, then rows.  Sent without waiting for the first batch.
        second = self.replicas.apply(
            "b2",
            [
                wire.encodeOp(RESET, "", b"", None),
                sessionRow(
                    "new",
                    {
                        "t/#": {
                            "qos": 1,
                            "no_local": False,
                            "retain_as_published": False,
                            "retain_handling": 0,
                            "identifiers": [],
                        }
                    },
                ),
                wire.encodeOp(wire.UPSERT, MESSAGES, b"new\x00" + b"%016x" % 7, held),
                wire.encodeOp(wire.UPSERT, WILLS, b"new", encodeMessage(message)),
            ],
        )
        await defer.gatherResults([first, second])
        self.assertEqual(await self.replicas.origins(), {"b2"})
        records, wills = await self.replicas.load("b2")
        self.assertEqual([r["clientId"] for r in records], ["new"])
        self.assertEqual(list(records[0]["subs"]), ["t/#"])
        self.assertEqual(
            [(seq, m.payload) for seq, m, _, _ in records[0]["messages"]], [(7, b"held")]
        )
        self.assertEqual(len(wills), 1)

    async def test_deletesAndOriginsKeptApart(self) -> None:
        await self.replicas.apply("b1", [sessionRow("a"), sessionRow("b")])
        await self.replicas.apply("b3", [sessionRow("c")])
        await self.replicas.apply("b1", [wire.encodeOp(wire.DELETE, SESSIONS, b"a", None)])
        self.assertEqual(await self.replicas.origins(), {"b1", "b3"})
        self.assertEqual([r["clientId"] for r in (await self.replicas.load("b1"))[0]], ["b"])
        self.assertEqual([r["clientId"] for r in (await self.replicas.load("b3"))[0]], ["c"])
        await self.replicas.reset("b3")
        self.assertEqual(await self.replicas.origins(), {"b1"})

    async def test_unknownShardRefused(self) -> None:
        with self.assertRaises(ValueError):
            await self.replicas.apply(
                "b1", [wire.encodeOp(wire.UPSERT, "mqtt/retained", b"k", b"v")]
            )
