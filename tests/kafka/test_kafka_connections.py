"""Kafka connections are the broker's connections: listed by the admin API with their
client.id, counted, and closed when the node shuts down."""

from __future__ import annotations

import json
import re
from urllib.request import urlopen

from kafkanode import TIMEOUT, KafkaNodeProcess

from kafka import KafkaProducer
from robustmq.testing.process import freePort


def test_kafkaClientsAreListedAndClosedOnShutdown(uniq: str) -> None:
    http = freePort()
    node = KafkaNodeProcess(extra=f'\n[http]\nenabled = true\nbind = "127.0.0.1"\nport = {http}\n')
    node.start()
    producer = None
    try:
        producer = KafkaProducer(bootstrap_servers=node.bootstrap, client_id=f"lister-{uniq}")
        producer.send(uniq, b"hello").get(TIMEOUT)
        with urlopen(f"http://127.0.0.1:{http}/api/v1/clients?protocol=kafka") as r:
            listed = json.load(r)["data"]
        assert listed, "no Kafka connection listed"
        assert {c["client_id"] for c in listed} == {f"lister-{uniq}"}
        assert all(c["protocol"] == "kafka" and c["peer"].startswith("127.0.0.1:") for c in listed)
        with urlopen(f"http://127.0.0.1:{http}/api/v1/clients?protocol=mqtt") as r:
            assert json.load(r)["data"] == []
        node.stop()
        closing = re.findall(r"broker stopping: closing (\d+) connections", node.output())
        assert closing == [str(len(listed))]
    finally:
        if producer is not None:
            producer.close(timeout=1)
        node.cleanup()
