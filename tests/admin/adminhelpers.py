"""Helpers for the admin API tests: real nodes with [http] on free loopback ports.

Helpers talk HTTP with urllib and MQTT with
paho-mqtt, each with a timeout, so nothing waits forever.
"""

from __future__ import annotations

import base64
import json
import queue
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from robustmq.testing.process import BrokerProcess, freePort, waitForPort

#: Seconds any single awaited event may take before the test fails.
TIMEOUT = 5.0


class AdminNode:
    """A running node with its MQTT port and admin URL."""

    def __init__(self, http: str = "", extra: str = "") -> None:
        self.httpPort = freePort()
        self.process = BrokerProcess(f"[http]\nport = {self.httpPort}\n{http}\n{extra}")
        self.url = f"http://127.0.0.1:{self.httpPort}"

    @property
    def port(self) -> int:
        return self.process.port

    def start(self) -> AdminNode:
        self.process.start()
        waitForPort("127.0.0.1", self.httpPort)
        return self

    def stop(self) -> None:
        self.process.cleanup()

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """One HTTP request; returns (status, headers, body) for any status."""
        data = raw
        hdrs = dict(headers or {})
        if body is not None:
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def json(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        status, _, data = self.request(method, path, body, **kw)
        return status, json.loads(data) if data else None

    def get(self, path: str, **kw: Any) -> Any:
        """GET that must succeed; returns the JSON."""
        status, value = self.json("GET", path, **kw)
        assert status == 200, (path, status, value)
        return value


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def waitFor(predicate: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    """Poll C{predicate} (bounded in time) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Paho:
    """A paho-mqtt 3.1.1 client on its own network thread, with timed helpers."""

    def __init__(self, port: int, clientId: str, clean: bool = True) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connected: queue.Queue[int] = queue.Queue()
        self.disconnected: queue.Queue[int] = queue.Queue()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=clientId,
            clean_session=clean,
            protocol=mqtt.MQTTv311,
        )
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.on_connect = lambda c, u, f, rc, p: self.connected.put(rc.value)
        self.client.on_disconnect = lambda c, u, f, rc, p: self.disconnected.put(rc.value)
        self.client.connect("127.0.0.1", port, keepalive=60)
        self.client.loop_start()
        assert self.connected.get(timeout=TIMEOUT) == 0

    def subscribe(self, topic: str, qos: int = 1) -> None:
        done: queue.Queue[int] = queue.Queue()
        self.client.on_subscribe = lambda c, u, mid, rcs, p: done.put(mid)
        _, mid = self.client.subscribe(topic, qos)
        assert done.get(timeout=TIMEOUT) == mid

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos, retain)
        info.wait_for_publish(TIMEOUT)
        assert info.is_published()

    def expect(self) -> mqtt.MQTTMessage:
        return self.messages.get(timeout=TIMEOUT)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class ProtocolNode(AdminNode):
    """An admin node that also serves Kafka and AMQP on free loopback ports."""

    def __init__(
        self, extra: str = "", mqtt: str = "sys_interval = 0", http: str = "", ws: bool = False
    ) -> None:
        self.kafkaPort, self.amqpPort = freePort(), freePort()
        #: an MQTT-over-WebSocket listener (path /mqtt), if asked for
        self.wsPort = freePort() if ws else None
        served = [("kafka", "tcp", self.kafkaPort), ("amqp", "tcp", self.amqpPort)]
        if self.wsPort is not None:
            served.append(("mqtt", "ws", self.wsPort))
        listeners = "".join(
            f'[[listeners]]\nprotocol = "{protocol}"\ntransport = "{transport}"\n'
            f'bind = "127.0.0.1"\nport = {port}\n\n'
            for protocol, transport, port in served
        )
        super().__init__(http=http, extra=f"{listeners}[mqtt]\n{mqtt}\n{extra}")

    def start(self) -> ProtocolNode:
        super().start()
        for port in (self.kafkaPort, self.amqpPort, self.wsPort):
            if port is not None:
                waitForPort("127.0.0.1", port)
        return self
