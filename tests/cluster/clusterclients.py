"""MQTT client helpers shared by the cluster tests."""

from __future__ import annotations

import time

import paho.mqtt.client as mqtt

from robustmq.testing.paho import PahoClient

#: The payload of route probes (ignored by L{payloads} and L{drain}).
PROBE = b"probe"


def connect(
    made: list[PahoClient],
    port: int,
    clientId: str,
    protocol: int = mqtt.MQTTv311,
    clean: bool = True,
) -> PahoClient:
    """A connected paho client, remembered in C{made} for clean-up."""
    client = PahoClient(port, clientId, protocol, clean)
    made.append(client)
    return client.connect()


def awaitRoute(
    publisher: PahoClient, subscribers: PahoClient | list[PahoClient], topic: str
) -> None:
    """Publish probes on C{topic} until every subscriber got one, then drain the rest.

    Routes reach the publisher's node through the placement center just
    after SUBACK; the probes show they have.
    """
    pending = [subscribers] if isinstance(subscribers, PahoClient) else list(subscribers)
    everyone = list(pending)
    deadline = time.monotonic() + 15
    while pending:
        assert time.monotonic() < deadline, f"route for {topic} never reached the publisher"
        publisher.publish(topic, PROBE, 1)
        for s in list(pending):
            try:
                if s.expect(0.2).payload == PROBE:
                    pending.remove(s)
            except AssertionError:
                pass
    time.sleep(0.3)
    for s in everyone:
        while not s.messages.empty():
            s.messages.get()


def payloads(client: PahoClient, n: int, timeout: float = 15.0) -> list[bytes]:
    """The next C{n} payloads other than probes."""
    deadline = time.monotonic() + timeout
    got: list[bytes] = []
    while len(got) < n:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"only {len(got)} of {n} messages: {got[-3:]}"
        msg = client.expect(remaining)
        if msg.payload != PROBE:
            got.append(msg.payload)
    return got


def drain(client: PahoClient, into: set[bytes], until: set[bytes], timeout: float) -> None:
    """Collect payloads (other than probes) into C{into} until it holds C{until} or time ends."""
    deadline = time.monotonic() + timeout
    while not until <= into and time.monotonic() < deadline:
        try:
            msg = client.expect(0.2)
        except AssertionError:
            continue
        if msg.payload != PROBE:
            into.add(msg.payload)
