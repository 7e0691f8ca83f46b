"""Back-pressure across the broker link: a slow subscriber on another node loses no
acknowledged QoS 1 message (real processes)."""

from __future__ import annotations

import json
import time
import uuid
from urllib.request import urlopen

import paho.mqtt.client as mqtt
import pytest
from clusterclients import awaitRoute

from robustmq.testing.cluster import LocalCluster
from robustmq.testing.paho import PahoClient

pytestmark = pytest.mark.timeout(120)


def dropped(httpPort: int | None) -> int:
    with urlopen(f"http://127.0.0.1:{httpPort}/api/v1/status") as r:
        return int(json.load(r)["stats"]["messages_dropped"])


def test_slowRemoteSubscriberPausesThePublisherInsteadOfDropping() -> None:
    uniq = uuid.uuid4().hex[:8]
    small = {"mqtt": {"max_queued_messages": 20, "max_inflight": 5}}
    with LocalCluster(placements=0, brokers=2, backend="embedded", brokerConfig=small) as cluster:
        b1, b2 = cluster.brokers
        slow = PahoClient(b2.port, f"slow-{uniq}")
        received: list[bytes] = []

        def onMessage(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
            if msg.payload != b"probe":
                received.append(msg.payload)
            time.sleep(0.002)  # a subscriber that reads slower than the publisher sends

        slow.connect()
        publisher = PahoClient(b1.port, f"fast-{uniq}").connect()
        try:
            slow.subscribe(f"bp/{uniq}/#", 1)
            awaitRoute(publisher, slow, f"bp/{uniq}/probe")
            slow.client.on_message = onMessage
            total = 1500
            infos = [
                publisher.client.publish(f"bp/{uniq}/t", f"m{i}".encode(), 1) for i in range(total)
            ]
            deadline = time.monotonic() + 60
            for info in infos:
                info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            assert all(info.is_published() for info in infos)
            while len(received) < total and time.monotonic() < deadline:
                time.sleep(0.05)
            # Every acknowledged message arrived, in order, and none was dropped on b2.
            assert received == [f"m{i}".encode() for i in range(total)]
            assert dropped(b2.httpPort) == 0
        finally:
            slow.stop()
            publisher.stop()
