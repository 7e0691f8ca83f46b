"""A real node with a Kafka listener, for the Kafka end-to-end tests."""

from __future__ import annotations

from robustmq.testing.process import BrokerProcess, freePort, waitForPort

#: Seconds any single awaited event may take before the test fails.
TIMEOUT = 20.0


class KafkaNodeProcess(BrokerProcess):
    """A L{BrokerProcess} with a Kafka listener on a free loopback port."""

    def __init__(
        self,
        extra: str = "",
        dataDir: str | None = None,
        kafkaPort: int | None = None,
        logLevel: str = "debug",
    ):
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
        super().__init__(extraConfig=config, dataDir=dataDir, logLevel=logLevel)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafkaPort}"

    def start(self, timeout: float = 20.0) -> KafkaNodeProcess:
        super().start(timeout)
        waitForPort("127.0.0.1", self.kafkaPort, timeout)
        return self


def kafkaRequest(
    bootstrap: str, apiKey: int, version: int, body: dict, timeout: float = TIMEOUT
) -> dict:
    """Send one request with the broker's own codec over a fresh socket; return the body.

    For APIs that no client library in the test extras offers.
    """
    import socket
    import struct

    from robustmq.protocols.kafka._codec import decodeResponse, encodeRequest

    host, port = bootstrap.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(encodeRequest(apiKey, version, 1, body))

        def recv(n: int) -> bytes:
            out = b""
            while len(out) < n:
                chunk = s.recv(n - len(out))
                if not chunk:
                    raise ConnectionError("closed by the broker")
                out += chunk
            return out

        (size,) = struct.unpack(">i", recv(4))
        correlation, response = decodeResponse(apiKey, version, recv(size))
        assert correlation == 1
        return response
