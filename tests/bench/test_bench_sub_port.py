"""``robustmq bench --sub-port`` against a real two-broker RobustMQ cluster.

Publishers connect to one broker, subscribers to the other, so every message
crosses the broker link.  Asserts delivery and which broker each client used,
nothing about speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import unittest
from typing import Any

from robustmq.testing.cluster import LocalCluster


class SubPortTests(unittest.TestCase):
    """Subscribers on C{--sub-port} (b2), publishers on C{--port} (b1)."""

    cluster: LocalCluster

    @classmethod
    def setUpClass(cls) -> None:
        cls.cluster = LocalCluster(placements=0, brokers=2, backend="embedded").start()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.cluster.cleanup()

    def bench(self, *args: str) -> dict[str, Any]:
        """Run one benchmark from b1 to b2 and return its JSON report."""
        b1, b2 = self.cluster.brokers
        done = subprocess.run(
            [sys.executable, "-m", "robustmq.bench", *args, "--port", str(b1.port)]
            + ["--sub-port", str(b2.port), "--settle", "0.5", "--json"],
            capture_output=True,
            text=True,
            timeout=90,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def assertConnectedTo(self, clientId: str, node: int) -> None:
        """C{clientId} was a client of broker C{node} (0 or 1) and never of the other."""
        brokers = self.cluster.brokers
        line = f"client {clientId} disconnected"
        brokers[node].waitForOutput(line, timeout=10)
        self.assertNotIn(line, brokers[1 - node].output())

    def test_throughput_across_brokers(self) -> None:
        r = self.bench("throughput", "--qos", "1", "--count", "2000", "--subscribers", "2")
        self.assertEqual(r["acked"], 2000)
        self.assertEqual(r["received"], 2 * 2000)
        self.assertEqual(r["lost"], 0)
        self.assertConnectedTo("bench-pub-0", 0)
        self.assertConnectedTo("bench-sub-0", 1)
        self.assertConnectedTo("bench-sub-1", 1)

    def test_latency_across_brokers(self) -> None:
        r = self.bench("latency", "--qos", "1", "--count", "200", "--rate", "500")
        self.assertEqual(r["sent"], 200)
        self.assertEqual(r["received"], 200)
        self.assertLessEqual(r["p50_ms"], r["p99_ms"])
        self.assertConnectedTo("bench-lat-pub", 0)
        self.assertConnectedTo("bench-lat-sub", 1)

    def test_negative_settle_refused(self) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "robustmq.bench", "latency", "--settle", "-1"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        self.assertEqual(done.returncode, 1)
        self.assertIn("--settle", done.stderr)


if __name__ == "__main__":
    unittest.main()
