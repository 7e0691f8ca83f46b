"""A real node serving MQTT, Kafka and AMQP with [[mappings]], for the topic-space tests."""

from __future__ import annotations

import json
import subprocess
import urllib.request

from robustmq.testing.process import BrokerProcess, freePort, waitForPort

#: Seconds any single awaited event may take before the test fails.
TIMEOUT = 20.0


class TopicSpaceNode(BrokerProcess):
    """A node with MQTT, Kafka and AMQP listeners on free loopback ports and mappings."""

    def __init__(
        self, extra: str = "", dataDir: str | None = None, logLevel: str = "debug"
    ) -> None:
        self.kafkaPort = freePort()
        self.amqpPort = freePort()
        self.httpPort = freePort()
        http = (
            ""
            if "[http]" in extra
            else f"""
[http]
enabled = true
bind = "127.0.0.1"
port = {self.httpPort}
"""
        )
        config = f"""{http}
[[listeners]]
protocol = "kafka"
bind = "127.0.0.1"
port = {self.kafkaPort}

[[listeners]]
protocol = "amqp"
bind = "127.0.0.1"
port = {self.amqpPort}

[storage]
backend = "segment"

[kafka]
group_initial_rebalance_delay_ms = 0
default_partitions = 3

[[mappings]]
mqtt = "sensors/#"
kafka = "sensors"

[[mappings]]
mqtt = "fleet/+/position"
kafka = "positions"
direction = "mqtt_to_kafka"

{extra}
"""
        super().__init__(extraConfig=config, dataDir=dataDir, logLevel=logLevel)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafkaPort}"

    def kafkaRecords(self, topic: str, count: int | None = None) -> list[dict]:
        """The records of C{topic} from the beginning (at most C{count}), read with kcat as
        JSON envelopes (key, payload, partition, offset...)."""
        limit = ["-c", str(count)] if count is not None else []
        out = subprocess.run(
            [
                "kcat",
                "-C",
                "-b",
                self.bootstrap,
                "-t",
                topic,
                "-o",
                "beginning",
                *limit,
                "-e",
                "-J",
            ],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=True,
        ).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def metrics(self) -> str:
        """The node's Prometheus exposition."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.httpPort}/metrics", timeout=10) as r:
            return r.read().decode()

    @property
    def amqpUrl(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqpPort}/%2F"

    def start(self, timeout: float = 20.0) -> TopicSpaceNode:
        super().start(timeout)
        waitForPort("127.0.0.1", self.kafkaPort, timeout)
        waitForPort("127.0.0.1", self.amqpPort, timeout)
        return self

    def mosquittoPub(self, topic: str, message: str, *args: str) -> None:
        subprocess.run(
            [
                "mosquitto_pub",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-t",
                topic,
                "-m",
                message,
                *args,
            ],
            check=True,
            timeout=TIMEOUT,
        )
