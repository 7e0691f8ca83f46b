"""The load generator against a real mosquitto on a free loopback port.

Checks that every subcommand runs end to end and reports sane numbers; it
asserts nothing about speed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest
from typing import Any

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"mosquitto did not listen on {port}")


@unittest.skipIf(
    MOSQUITTO is None, "the mosquitto binary is not installed (apt-get install mosquitto)"
)
class BenchToolTests(unittest.TestCase):
    """``python -m robustmq.bench`` against mosquitto."""

    broker: subprocess.Popen[bytes]
    port: int
    tmp: tempfile.TemporaryDirectory[str]

    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = tempfile.TemporaryDirectory()
        cls.port = _free_port()
        conf = os.path.join(cls.tmp.name, "mosquitto.conf")
        with open(conf, "w") as out:
            out.write(
                f"listener {cls.port} 127.0.0.1\n"
                "allow_anonymous true\n"
                "max_queued_messages 100000\n"
                "max_inflight_messages 1000\n"
            )
        assert MOSQUITTO is not None
        cls.broker = subprocess.Popen(
            [MOSQUITTO, "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            _wait_listening(cls.port)
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        cls.broker.terminate()
        try:
            cls.broker.wait(timeout=5)
        except subprocess.TimeoutExpired:
            cls.broker.kill()
            cls.broker.wait(timeout=5)
        cls.tmp.cleanup()

    def bench(self, *args: str) -> dict[str, Any]:
        """Run one benchmark and return its JSON report."""
        done = subprocess.run(
            [sys.executable, "-m", "robustmq.bench", *args, "--port", str(self.port), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def test_throughput_qos0(self) -> None:
        r = self.bench("throughput", "--qos", "0", "--count", "2000", "--duration", "20")
        self.assertEqual(r["sent"], 2000)
        self.assertGreater(r["received"], 0)
        self.assertLessEqual(r["received"], r["sent"])
        self.assertGreater(r["msgs_per_sec"], 0)

    def test_throughput_qos1(self) -> None:
        r = self.bench("throughput", "--qos", "1", "--count", "2000", "--duration", "20")
        self.assertEqual(r["sent"], 2000)
        self.assertEqual(r["acked"], 2000)
        self.assertEqual(r["received"], r["sent"])
        self.assertEqual(r["lost"], 0)
        self.assertGreater(r["msgs_per_sec"], 0)

    def test_fan_out(self) -> None:
        r = self.bench("throughput", "--count", "200", "--subscribers", "5", "--qos", "1")
        self.assertEqual(r["received"], 5 * 200)
        self.assertEqual(r["min_per_subscriber"], 200)

    def test_latency(self) -> None:
        r = self.bench("latency", "--count", "200", "--rate", "500")
        self.assertEqual(r["sent"], 200)
        self.assertGreater(r["received"], 0)
        self.assertGreater(r["p50_ms"], 0)
        self.assertLessEqual(r["p50_ms"], r["p99_ms"])
        self.assertLessEqual(r["p99_ms"], r["max_ms"])

    def test_conn(self) -> None:
        r = self.bench("conn", "--connections", "50", "--pid", str(self.broker.pid))
        self.assertEqual(r["connections"], 50)
        self.assertGreater(r["rss_after_kb"], 0)
        self.assertIsNotNone(r["kb_per_connection"])

    def test_refuses_non_loopback(self) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "robustmq.bench", "conn", "--host", "192.0.2.1"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        self.assertEqual(done.returncode, 1)
        self.assertIn("loopback", done.stderr)


class WireTests(unittest.TestCase):
    """The pre-encoded packets and the stride counter, without a broker."""

    def test_ring_ids_and_stride_count(self) -> None:
        from robustmq.bench._framing import RecordCounter
        from robustmq.bench._mqtt_wire import PublishLayout, bench_payload

        layout = PublishLayout(b"bench/t", 64, 1)
        ring = layout.ring(bench_payload(64), 300)
        counter = RecordCounter(layout.header, layout.size, layout.packet_id_offset)
        # a PINGRESP first misaligns the stream; then feed byte-sized pieces
        counter.feed(b"\xd0\x00")
        total, ids = 0, bytearray()
        for i in range(0, len(ring), 97):
            counter.feed(ring[i : i + 97])
            got, more = counter.scan()
            total += got
            ids += more
        self.assertEqual(total, 300)
        self.assertEqual(counter.others, 1)
        self.assertEqual(
            [int.from_bytes(ids[i : i + 2]) for i in range(0, 600, 2)], list(range(1, 301))
        )
