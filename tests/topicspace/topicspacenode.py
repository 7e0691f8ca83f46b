"""A real node serving MQTT, Kafka and AMQP with [[mappings]], for the topic-space tests."""

from __future__ import annotations

import subprocess

from robustmq.testing.process import BrokerProcess, freePort, waitForPort

#: Seconds any single awaited event may take before the test fails.
TIMEOUT = 20.0


class TopicSpaceNode(BrokerProcess):
    """A node with MQTT, Kafka and AMQP listeners on free loopback ports and mappings."""

    def __init__(self, extra: str = "", dataDir: str | None = None) -> None:
        self.kafkaPort = freePort()
        self.amqpPort = freePort()
        config = f"""
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
        super().__init__(extraConfig=config, dataDir=dataDir)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafkaPort}"

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
