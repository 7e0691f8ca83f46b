"""$SYS topics mosquitto users look for: load/# rates, heap/current and heap/maximum
(process memory), store/messages/count and bytes; on the in-memory broker's clock."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from robustmq.config import settingsFromMapping
from robustmq.core.broker import Broker
from robustmq.core.systopics import publishSys, sysValues
from robustmq.protocols.mqtt._packets import Connect, Publish
from robustmq.storage.memory import MemoryShardStore
from robustmq.testing.memory import InMemoryBroker


class SysTopicsTests(SynchronousTestCase):
    def test_loadIsPerMinuteOverEachWindow(self) -> None:
        harness = InMemoryBroker({"mqtt": {"sys_interval": 0}})
        broker = harness.broker
        pub = harness.connect(50001)
        pub.send(Connect("p"))
        publishSys(broker)
        # 60 messages over one minute, then a quiet minute.
        for second in range(60):
            harness.clock.advance(1)
            pub.send(Publish("load/t", b"x" * 10, qos=0))
            if second % 10 == 9:
                publishSys(broker)
        one = sysValues(broker)
        self.assertEqual(one["$SYS/broker/load/messages/received/1min"], "60.00")
        self.assertEqual(one["$SYS/broker/load/messages/received/15min"], "60.00")
        self.assertGreater(float(one["$SYS/broker/load/bytes/received/1min"]), 60 * 10)
        for _ in range(6):
            harness.clock.advance(10)
            publishSys(broker)
        quiet = sysValues(broker)
        self.assertEqual(quiet["$SYS/broker/load/messages/received/1min"], "0.00")
        self.assertEqual(quiet["$SYS/broker/load/messages/received/5min"], "30.00")
        for name in ("messages/sent", "bytes/sent"):
            for window in ("1min", "5min", "15min"):
                self.assertIn(f"$SYS/broker/load/{name}/{window}", quiet)

    def test_heapIsTheProcessMemory(self) -> None:
        values = sysValues(InMemoryBroker().broker)
        current = int(values["$SYS/broker/heap/current"])
        maximum = int(values["$SYS/broker/heap/maximum"])
        self.assertGreater(current, 1 << 20)
        self.assertGreaterEqual(maximum, current)

    def test_storeMessagesCountAndBytes(self) -> None:
        store = MemoryShardStore()
        store.open()
        broker = Broker(settingsFromMapping({}), Clock(), store)
        empty = sysValues(broker)
        self.assertEqual(empty["$SYS/broker/store/messages/count"], "0")
        store.createShard("sys-test")
        store.append("sys-test", [{"value": b"x" * 100} for _ in range(3)])
        values = sysValues(broker)
        self.assertEqual(values["$SYS/broker/store/messages/count"], "3")
        self.assertGreaterEqual(int(values["$SYS/broker/store/messages/bytes"]), 300)
