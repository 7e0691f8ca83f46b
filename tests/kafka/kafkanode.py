"""A real node with a Kafka listener, for the Kafka end-to-end tests."""

from __future__ import annotations

from robustmq.testing.process import BrokerProcess, freePort, waitForPort

#: Seconds any single awaited event may take before the test fails.
TIMEOUT = 20.0


class KafkaNodeProcess(BrokerProcess):
    """A L{BrokerProcess} with a Kafka listener on a free loopback port."""

    def __init__(self, extra: str = "", dataDir: str | None = None, kafkaPort: int | None = None):
        self.kafkaPort = kafkaPort or freePort()
        config = f"""
[[listeners]]
protocol = "kafka"
transport = "tcp"
bind = "127.0.0.1"
port = {self.kafkaPort}

[kafka]
group_initial_rebalance_delay_ms = 0
{extra}
"""
        super().__init__(extraConfig=config, dataDir=dataDir)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafkaPort}"

    def start(self, timeout: float = 20.0) -> KafkaNodeProcess:
        super().start(timeout)
        waitForPort("127.0.0.1", self.kafkaPort, timeout)
        return self
