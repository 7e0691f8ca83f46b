"""paho-mqtt clients for tests: each on its own network thread, with blocking, timed helpers."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

#: Seconds any single awaited event may take before the test fails.
TIMEOUT = 5.0


class Received:
    """A message as a paho client saw it."""

    __slots__ = ("topic", "payload", "qos", "retain", "dup", "mid", "properties")

    def __init__(self, msg: mqtt.MQTTMessage) -> None:
        self.topic = msg.topic
        #: MQTT 5 PUBLISH properties (paho's Properties), None under 3.x
        self.properties = getattr(msg, "properties", None)
        self.payload = msg.payload
        self.qos = msg.qos
        self.retain = bool(msg.retain)
        self.dup = bool(msg.dup)
        self.mid = msg.mid

    def __repr__(self) -> str:
        return (
            f"Received({self.topic!r}, {self.payload[:40]!r}, qos={self.qos}, retain={self.retain})"
        )


class PahoClient:
    """A paho-mqtt client run by its own network thread, with blocking, timed helpers.

    Messages land in C{messages} (a queue); L{expect} takes the next one or
    fails the test after a timeout.
    """

    def __init__(
        self,
        port: int,
        clientId: str,
        protocol: int = mqtt.MQTTv311,
        cleanSession: bool = True,
        keepAlive: int = 60,
        sessionExpiry: int = 0,
    ) -> None:
        self.port = port
        self.v5 = protocol == mqtt.MQTTv5
        #: MQTT 5: Clean Start and Session Expiry Interval sent on CONNECT
        self.cleanStart = cleanSession
        self.sessionExpiry = sessionExpiry
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=clientId,
            protocol=protocol,
            clean_session=None if self.v5 else cleanSession,
        )
        #: reason codes of every disconnection (MQTT 5: the server's DISCONNECT reason)
        self.disconnectReasons: list[int] = []
        self.keepAlive = keepAlive
        self.messages: queue.Queue[Received] = queue.Queue()
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.connectResult: Any = None
        self.sessionPresent: bool | None = None
        self._subacks: dict[int, tuple[threading.Event, list[Any]]] = {}
        self._lock = threading.Lock()
        self.client.on_connect = self._onConnect
        self.client.on_disconnect = self._onDisconnect
        self.client.on_message = self._onMessage
        self.client.on_subscribe = self._onSubscribe
        self.client.on_unsubscribe = self._onUnsubscribe
        self._unsubacks: dict[int, threading.Event] = {}
        self._started = False

    # paho callbacks (network thread)

    def _onConnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.connectResult = rc
        self.sessionPresent = bool(flags.session_present)
        self.disconnected.clear()
        self.connected.set()

    def _onDisconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.disconnectReasons.append(rc.value)
        self.connected.clear()
        self.disconnected.set()

    def _onMessage(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.messages.put(Received(msg))

    def _onSubscribe(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        with self._lock:
            entry = self._subacks.setdefault(mid, (threading.Event(), []))
        entry[1].extend(c.value for c in codes)
        entry[0].set()

    def _onUnsubscribe(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        with self._lock:
            event = self._unsubacks.setdefault(mid, threading.Event())
        event.set()

    # Blocking helpers (test thread)

    def connect(self, will: tuple[str, bytes, int, bool] | None = None) -> PahoClient:
        """Connect and wait for a successful CONNACK."""
        if will is not None:
            self.client.will_set(*will)
        if self.v5:
            props = mqtt.Properties(mqtt.PacketTypes.CONNECT)
            if self.sessionExpiry:
                props.SessionExpiryInterval = self.sessionExpiry
            self.client.connect(
                "127.0.0.1",
                self.port,
                keepalive=self.keepAlive,
                clean_start=self.cleanStart,
                properties=props,
            )
        else:
            self.client.connect("127.0.0.1", self.port, keepalive=self.keepAlive)
        if not self._started:
            self.client.loop_start()
            self._started = True
        assert self.connected.wait(TIMEOUT), "no CONNACK"
        assert not self.connectResult.is_failure, self.connectResult
        return self

    def subscribe(self, topic: str | list[tuple[str, int]], qos: int = 0) -> list[int]:
        """SUBSCRIBE and wait for the SUBACK; returns the granted QoS list."""
        rc, mid = self.client.subscribe(topic, qos)
        assert rc == mqtt.MQTT_ERR_SUCCESS, rc
        with self._lock:
            entry = self._subacks.setdefault(mid, (threading.Event(), []))
        assert entry[0].wait(TIMEOUT), f"no SUBACK for {topic!r}"
        return entry[1]

    def unsubscribe(self, topic: str) -> None:
        """UNSUBSCRIBE and wait for the UNSUBACK."""
        rc, mid = self.client.unsubscribe(topic)
        assert rc == mqtt.MQTT_ERR_SUCCESS, rc
        with self._lock:
            event = self._unsubacks.setdefault(mid, threading.Event())
        assert event.wait(TIMEOUT), f"no UNSUBACK for {topic!r}"

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        properties: dict[str, Any] | None = None,
    ) -> None:
        """PUBLISH and wait until paho has sent it (and, at QoS 1/2, had it acknowledged).

        @param properties: MQTT 5 properties by paho's names (C{{"ContentType": ...}}).
        """
        props = None
        if properties:
            props = mqtt.Properties(mqtt.PacketTypes.PUBLISH)
            for name, value in properties.items():
                setattr(props, name, value)
        info = self.client.publish(topic, payload, qos, retain, properties=props)
        info.wait_for_publish(TIMEOUT)
        assert info.is_published(), f"PUBLISH to {topic!r} not completed"

    def expect(self, timeout: float = TIMEOUT) -> Received:
        """The next message received; fails the test after C{timeout}."""
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no message within {timeout}s") from None

    def untilTopic(self, topic: str, timeout: float = TIMEOUT) -> list[Received]:
        """Messages received before the first one on C{topic} (which is consumed).

        Used with a sentinel published after the messages that must I{not}
        arrive: one publisher's messages keep their order, so anything wrongly
        delivered arrives before the sentinel.
        """
        before: list[Received] = []
        deadline = time.monotonic() + timeout
        while True:
            msg = self.expect(max(0.01, deadline - time.monotonic()))
            if msg.topic == topic:
                return before
            before.append(msg)

    def expectMany(self, n: int, timeout: float = 3 * TIMEOUT) -> list[Received]:
        """The next C{n} messages, all within C{timeout} in total."""
        deadline = time.monotonic() + timeout
        got: list[Received] = []
        for _ in range(n):
            remaining = deadline - time.monotonic()
            try:
                got.append(self.messages.get(timeout=max(0.01, remaining)))
            except queue.Empty:
                raise AssertionError(
                    f"only {len(got)} of {n} messages within {timeout}s; last: {got[-1:]}"
                ) from None
        return got

    def expectNothing(self, timeout: float = 0.3) -> None:
        """Fail if a message arrives within C{timeout}."""
        try:
            msg = self.messages.get(timeout=timeout)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected message {msg!r}")

    def disconnect(self) -> None:
        """Send DISCONNECT and wait until the connection is closed."""
        if self.connected.is_set():
            self.client.disconnect()
            assert self.disconnected.wait(TIMEOUT), "not disconnected"

    def stop(self) -> None:
        """Disconnect (if connected) and stop the network thread."""
        try:
            self.client.disconnect()
        except Exception:
            pass
        if self._started:
            self.client.loop_stop()
            self._started = False
