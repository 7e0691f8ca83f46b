"""An MQTT QoS 1 publish into a mapped Kafka topic is PUBACKed only once the record is stored:
after SIGKILL and a restart, every acknowledged message is in the Kafka topic."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as paho
from topicspacenode import TIMEOUT, TopicSpaceNode

from robustmq.testing.paho import PahoClient


def test_ackedMqttPublishesSurviveSigkillInMappedTopic(tmp_path: Path) -> None:
    node = TopicSpaceNode(dataDir=str(tmp_path / "data")).start()
    room = uuid.uuid4().hex[:8]
    acked: list[str] = []
    stop = threading.Event()
    try:
        client = PahoClient(node.port, f"pub-{room}", protocol=paho.MQTTv311)
        client.connect()

        def publish() -> None:
            for i in range(100_000):
                if stop.is_set():
                    return
                payload = f"m{i}"
                info = client.client.publish(f"sensors/{room}/load", payload, 1)
                info.wait_for_publish(TIMEOUT)
                if not info.is_published():
                    return
                acked.append(payload)

        thread = threading.Thread(target=publish, daemon=True)
        thread.start()
        deadline = time.monotonic() + TIMEOUT
        while len(acked) < 300 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(acked) >= 300, "the publisher made no progress"
        node.kill()
        stop.set()
        thread.join(TIMEOUT)
        client.stop()
        node.start()
        stored = [r["payload"] for r in node.kafkaRecords("sensors")]
        missing = set(acked) - set(stored)
        assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {sorted(missing)[:5]}"
        # One MQTT topic, one partition: in publish order.
        ours = [p for p in stored if p in set(acked)]
        assert ours == acked[: len(ours)] and len(ours) == len(acked)
    finally:
        stop.set()
        node.cleanup()
