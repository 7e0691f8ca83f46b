"""The Kafka server protocol over an in-memory transport, with a fake clock."""

from __future__ import annotations

import struct
from typing import Any

import crc32c
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from robustmq.config import ListenerSettings, settingsFromMapping
from robustmq.core.auth import ALLOW, DENY, IGNORE, AuthChain
from robustmq.core.broker import Broker
from robustmq.core.scram import ScramClient, scramSha256Plugin, scramSha512Plugin
from robustmq.core.security.authenticators import AnonymousAuthenticator
from robustmq.interfaces import IAuthenticator
from robustmq.protocols.kafka import KafkaParser, KafkaServerFactory, kafkaPlugin
from robustmq.protocols.kafka._codec import decodeResponse, encodeRequest
from robustmq.storage.memory import MemoryShardStore


@implementer(IAuthenticator)
class _OnePassword:
    name = "test"

    def authenticate(self, credentials):  # type: ignore[no-untyped-def]
        if credentials.password is None:
            return IGNORE  # left to the anonymous authenticator (loopback only)
        ok = credentials.username == "alice" and credentials.password == b"secret"
        return ALLOW if ok else DENY


def _batch(n: int) -> bytes:
    tail = struct.pack(">hiqqqhii", 0, n - 1, 1000, 1000, -1, -1, -1, n) + b"\x00" * 7 * n
    return struct.pack(">qiibI", 0, 9 + len(tail), 0, 2, crc32c.crc32c(tail)) + tail


def _produce(records: bytes, acks: int = 1) -> dict:
    """A Produce body writing C{records} (a record batch) to partition 0 of topic "t"."""
    return {
        "acks": acks,
        "timeout_ms": 1000,
        "topic_data": [{"name": "t", "partition_data": [{"index": 0, "records": records}]}],
    }


def _longPoll(fetchOffset: int) -> dict:
    """A Fetch body (v11 layout) for partition 0 of "t" that waits up to 5 s for one byte."""
    return {
        "replica_id": -1,
        "max_wait_ms": 5000,
        "min_bytes": 1,
        "max_bytes": 1 << 20,
        "isolation_level": 0,
        "topics": [
            {
                "topic": "t",
                "partitions": [
                    {"partition": 0, "fetch_offset": fetchOffset, "partition_max_bytes": 1 << 20}
                ],
            }
        ],
    }


#: A ListOffsets body asking for the end offset of partition 0 of "t".
_LATEST_OFFSET = {
    "replica_id": -1,
    "topics": [{"name": "t", "partitions": [{"partition_index": 0, "timestamp": -1}]}],
}


def _sendPlain(proto: Any, authBytes: bytes) -> None:
    """SaslHandshake for PLAIN (correlation id 1), then SaslAuthenticate with C{authBytes} (2)."""
    proto.dataReceived(encodeRequest(17, 1, 1, {"mechanism": "PLAIN"}))
    proto.dataReceived(encodeRequest(36, 2, 2, {"auth_bytes": authBytes}))


class KafkaProtocolTests(TestCase):
    def setUp(self) -> None:
        self.makeNode({})

    def makeNode(self, kafka: dict, scramUsers: tuple[dict, ...] = ()) -> None:
        self.clock = Clock()
        settings = settingsFromMapping({"kafka": kafka, "mqtt": {"scram_users": list(scramUsers)}})
        store = MemoryShardStore(settings.storage, clock=self.clock)
        store.open()
        mechanisms = {p.name: p.build(settings) for p in (scramSha256Plugin, scramSha512Plugin)}
        self.broker = Broker(
            settings,
            self.clock,
            store=store,
            auth=AuthChain([_OnePassword(), AnonymousAuthenticator("loopback")]),
            authMechanisms=mechanisms,
        )
        self.broker.nodeServices["kafka"] = kafkaPlugin.buildNodeService(self.broker, self.clock)
        self.factory = KafkaServerFactory(
            self.broker, ListenerSettings(protocol="kafka", port=9092), self.clock
        )

    def connect(self, host: str = "127.0.0.1") -> tuple[object, StringTransport]:
        proto = self.factory.buildProtocol(IPv4Address("TCP", host, 5000))
        transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 9092),
            peerAddress=IPv4Address("TCP", host, 5000),
        )
        proto.makeConnection(transport)
        return proto, transport

    def responses(self, transport: StringTransport) -> list[bytes]:
        frames = KafkaParser(1 << 24).feed(transport.value())
        transport.clear()
        return frames

    def connectWithTopic(self) -> tuple[Any, StringTransport]:
        """A connection that created topic "t" (Metadata, correlation id 1); its answer is read."""
        proto, t = self.connect()
        proto.dataReceived(encodeRequest(3, 1, 1, {"topics": [{"name": "t"}]}))
        self.responses(t)
        return proto, t

    def test_apiVersionsTooNewThenSupported(self) -> None:
        """v9 gets the v0-layout UNSUPPORTED_VERSION; v3 then succeeds."""
        proto, t = self.connect()
        tooNew = bytearray(encodeRequest(18, 4, 1, {}))
        tooNew[6:8] = struct.pack(">h", 9)  # a version no schema knows yet
        proto.dataReceived(bytes(tooNew) + encodeRequest(18, 3, 2, {}))
        first, second = self.responses(t)
        self.assertEqual(decodeResponse(18, 0, first)[1]["error_code"], 35)
        corr, body = decodeResponse(18, 3, second)
        self.assertEqual((corr, body["error_code"]), (2, 0))

    def test_byteByByteAndInOrder(self) -> None:
        """Requests fed one byte at a time are answered once each, in order."""
        proto, t = self.connect()
        stream = b"".join(encodeRequest(18, 0, i, {}) for i in range(5))
        stream += encodeRequest(3, 1, 5, {"topics": [{"name": "t"}]})
        for i in range(len(stream)):
            proto.dataReceived(stream[i : i + 1])
        frames = self.responses(t)
        self.assertEqual([struct.unpack(">i", f[:4])[0] for f in frames], list(range(6)))

    def test_produceRequestsArePipelinedAndAnsweredInOrder(self) -> None:
        """While a Produce waits for its append to be durable, the next requests are handled
        (their offsets assigned); the answers still leave in request order."""
        proto, t = self.connectWithTopic()
        store = self.broker.store
        held: list[Any] = []
        realAppendSpan = store.appendSpan

        def slowAppendSpan(shard: str, record: Any, span: int) -> Any:
            from twisted.internet import defer

            done: defer.Deferred[Any] = defer.Deferred()
            held.append((realAppendSpan(shard, record, span), done))
            return done

        store.appendSpan = slowAppendSpan  # type: ignore[method-assign]
        proto.dataReceived(
            encodeRequest(0, 7, 2, _produce(_batch(3)))
            + encodeRequest(0, 7, 3, _produce(_batch(2)))
            + encodeRequest(18, 3, 4, {})
        )
        self.assertEqual(len(held), 2, "the second Produce was handled while the first waited")
        self.assertEqual(t.value(), b"", "nothing answered before the first append is durable")
        real, done = held[1]
        real.chainDeferred(done)  # the second one is durable first
        self.assertEqual(t.value(), b"", "the second answer waits for the first")
        real, done = held[0]
        real.chainDeferred(done)
        frames = self.responses(t)
        self.assertEqual([struct.unpack(">i", f[:4])[0] for f in frames], [2, 3, 4])
        bases = [
            decodeResponse(0, 7, f)[1]["responses"][0]["partition_responses"][0]["base_offset"]
            for f in frames[:2]
        ]
        self.assertEqual(bases, [0, 3])

    def test_acksZeroHasNoResponse(self) -> None:
        """Produce with acks=0 is stored but not answered; the next request is."""
        proto, t = self.connectWithTopic()
        proto.dataReceived(
            encodeRequest(0, 7, 2, _produce(_batch(4), acks=0))
            + encodeRequest(2, 1, 3, _LATEST_OFFSET)
        )
        (only,) = self.responses(t)
        corr, body = decodeResponse(2, 1, only)
        self.assertEqual(corr, 3)
        self.assertEqual(body["topics"][0]["partitions"][0]["offset"], 4)

    def test_corruptBatchRefused(self) -> None:
        """A batch whose CRC does not match gets CORRUPT_MESSAGE."""
        proto, t = self.connectWithTopic()
        bad = bytearray(_batch(2))
        bad[-1] ^= 0xFF
        proto.dataReceived(encodeRequest(0, 7, 2, _produce(bytes(bad))))
        (frame,) = self.responses(t)
        body = decodeResponse(0, 7, frame)[1]
        self.assertEqual(body["responses"][0]["partition_responses"][0]["error_code"], 2)

    def test_fetchLongPollsUntilProduce(self) -> None:
        """A Fetch with min_bytes waits; a produce on another connection releases it."""
        proto, t = self.connectWithTopic()
        proto.dataReceived(encodeRequest(1, 11, 2, _longPoll(0)))
        self.assertEqual(self.responses(t), [])
        other, t2 = self.connect()
        other.dataReceived(encodeRequest(0, 7, 1, _produce(_batch(2))))
        frames = self.responses(t)
        self.assertEqual(len(frames), 1)
        body = decodeResponse(1, 11, frames[0])[1]
        part = body["responses"][0]["partitions"][0]
        self.assertEqual(part["high_watermark"], 2)
        self.assertEqual(part["records"][:8], b"\x00" * 8)  # base offset rewritten to 0

    def test_fetchEndsEarlyForPipelinedRequest(self) -> None:
        """A long-polling Fetch answers at once when another request arrives behind it.

        Responses go out in request order, so otherwise the ListOffsets queued
        behind it would wait out the Fetch's max_wait_ms (a consumer's watermark
        query, commit or heartbeat on its fetch connection, every time).
        """
        proto, t = self.connectWithTopic()
        proto.dataReceived(encodeRequest(0, 7, 2, _produce(_batch(3))))
        self.responses(t)
        fetch = _longPoll(3)
        # the ListOffsets arrives while the Fetch is parked ...
        proto.dataReceived(encodeRequest(1, 11, 3, fetch))
        self.assertEqual(self.responses(t), [])
        proto.dataReceived(encodeRequest(2, 1, 4, _LATEST_OFFSET))
        # ... or in the same segment as it
        proto.dataReceived(encodeRequest(1, 11, 5, fetch) + encodeRequest(2, 1, 6, _LATEST_OFFSET))
        frames = self.responses(t)
        self.assertEqual([struct.unpack(">i", f[:4])[0] for f in frames], [3, 4, 5, 6])
        for fetched, listed in ((frames[0], frames[1]), (frames[2], frames[3])):
            part = decodeResponse(1, 11, fetched)[1]["responses"][0]["partitions"][0]
            self.assertEqual((part["error_code"], part["high_watermark"]), (0, 3))
            self.assertEqual(part["records"], b"")
            offsets = decodeResponse(2, 1, listed)[1]["topics"][0]["partitions"][0]
            self.assertEqual((offsets["error_code"], offsets["offset"]), (0, 3))
        # a Fetch with nothing behind it still long-polls
        proto.dataReceived(encodeRequest(1, 11, 7, fetch))
        self.assertEqual(self.responses(t), [])
        self.clock.advance(5.1)
        (frame,) = self.responses(t)
        self.assertEqual(struct.unpack(">i", frame[:4])[0], 7)

    def test_fetchTimesOutEmpty(self) -> None:
        """With nothing to read the Fetch answers when max_wait_ms passes on the clock."""
        proto, t = self.connectWithTopic()
        fetch = {
            "replica_id": -1,
            "max_wait_ms": 500,
            "min_bytes": 1,
            "topics": [
                {
                    "topic": "t",
                    "partitions": [{"partition": 0, "fetch_offset": 0, "partition_max_bytes": 100}],
                }
            ],
        }
        proto.dataReceived(encodeRequest(1, 4, 2, fetch))
        self.assertEqual(self.responses(t), [])
        self.clock.advance(0.6)
        (frame,) = self.responses(t)
        self.assertEqual(
            decodeResponse(1, 4, frame)[1]["responses"][0]["partitions"][0]["records"], b""
        )

    def test_saslPlain(self) -> None:
        """With sasl_required, PLAIN through the auth chain: right password in, wrong one out."""
        self.makeNode({"sasl_required": True})
        proto, t = self.connect()
        _sendPlain(proto, b"\x00alice\x00secret")
        proto.dataReceived(encodeRequest(3, 1, 3, {"topics": []}))
        frames = self.responses(t)
        self.assertEqual(decodeResponse(17, 1, frames[0])[1]["mechanisms"][0], "PLAIN")
        self.assertEqual(decodeResponse(36, 2, frames[1])[1]["error_code"], 0)
        self.assertEqual(len(frames), 3)
        bad, t2 = self.connect()
        _sendPlain(bad, b"\x00alice\x00wrong")
        frames = self.responses(t2)
        self.assertEqual(decodeResponse(36, 2, frames[1])[1]["error_code"], 58)
        self.clock.advance(0)
        self.assertTrue(t2.disconnecting)

    def _scram(self, mechanism: str, hashName: str, password: str) -> tuple[list[dict], object]:
        proto, t = self.connect()
        client = ScramClient("bob", password, hashName)
        proto.dataReceived(encodeRequest(17, 1, 1, {"mechanism": mechanism}))
        proto.dataReceived(encodeRequest(36, 2, 2, {"auth_bytes": client.first()}))
        frames = self.responses(t)
        self.assertEqual(decodeResponse(17, 1, frames[0])[1]["error_code"], 0)
        first = decodeResponse(36, 2, frames[1])[1]
        self.assertEqual(first["error_code"], 0)
        proto.dataReceived(
            encodeRequest(36, 2, 3, {"auth_bytes": client.final(first["auth_bytes"])})
        )
        final = decodeResponse(36, 2, self.responses(t)[0])[1]
        if final["error_code"] == 0:
            self.assertTrue(client.verify(final["auth_bytes"]))
        return [first, final], t

    def test_saslScram(self) -> None:
        """SCRAM-SHA-256 and -512 over SaslAuthenticate; the server proves itself; a wrong password closes."""
        self.makeNode({"sasl_required": True}, ({"username": "bob", "password": "pw"},))
        for mechanism, hashName in (("SCRAM-SHA-256", "sha256"), ("SCRAM-SHA-512", "sha512")):
            (_, final), t = self._scram(mechanism, hashName, "pw")
            self.assertEqual(final["error_code"], 0)
            self.assertFalse(t.disconnecting)
            (_, final), t = self._scram(mechanism, hashName, "nope")
            self.assertEqual(final["error_code"], 58)
            self.clock.advance(0)
            self.assertTrue(t.disconnecting)

    def test_saslPlainChecksScramUsers(self) -> None:
        """PLAIN for a user of the SCRAM table is checked against its stored keys, not the chain."""
        self.makeNode({"sasl_required": True}, ({"username": "bob", "password": "pw"},))
        for password, code in ((b"pw", 0), (b"secret", 58)):
            proto, t = self.connect()
            _sendPlain(proto, b"\x00bob\x00" + password)
            frames = self.responses(t)
            mechanisms = decodeResponse(17, 1, frames[0])[1]["mechanisms"]
            self.assertEqual(mechanisms, ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
            self.assertEqual(decodeResponse(36, 2, frames[1])[1]["error_code"], code)

    def test_requestBeforeSaslCloses(self) -> None:
        """With sasl_required, Metadata before authenticating is answered with
        SASL_AUTHENTICATION_FAILED for its topics, then the connection closes."""
        self.makeNode({"sasl_required": True})
        proto, t = self.connect()
        proto.dataReceived(encodeRequest(3, 1, 1, {"topics": [{"name": "t"}]}))
        (frame,) = self.responses(t)
        topics = decodeResponse(3, 1, frame)[1]["topics"]
        self.assertEqual([(x["name"], x["error_code"]) for x in topics], [("t", 58)])
        self.clock.advance(0)
        self.assertTrue(t.disconnecting)

    def test_anonymousOnlyFromLoopback(self) -> None:
        """Without SASL a loopback client is served (anonymous); another host's Produce
        gets SASL_AUTHENTICATION_FAILED per partition, nothing is written, and it is closed."""
        proto, t = self.connect("10.211.0.2")
        proto.dataReceived(encodeRequest(0, 7, 1, _produce(_batch(2))))
        (frame,) = self.responses(t)
        part = decodeResponse(0, 7, frame)[1]["responses"][0]["partition_responses"][0]
        self.assertEqual(part["error_code"], 58)
        self.clock.advance(0)
        self.assertTrue(t.disconnecting)
        local, t2 = self.connectWithTopic()
        local.dataReceived(encodeRequest(0, 7, 1, _produce(_batch(2))))
        (frame,) = self.responses(t2)
        part = decodeResponse(0, 7, frame)[1]["responses"][0]["partition_responses"][0]
        self.assertEqual((part["error_code"], part["base_offset"]), (0, 0))  # nothing before
        self.assertEqual(local.principal, None)
        self.assertEqual(local.access.principal, "User:ANONYMOUS")

    def test_authenticationTimeout(self) -> None:
        """A connection that does not authenticate within authentication_timeout_ms is closed."""
        self.makeNode({"authentication_timeout_ms": 2000})
        proto, t = self.connect("10.211.0.2")
        proto.dataReceived(encodeRequest(18, 0, 1, {}))  # ApiVersions needs no authentication
        self.clock.advance(1.9)
        self.assertFalse(t.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(t.disconnecting)
        # An authenticated one stays (until it is idle for connections_max_idle_ms).
        ok, t2 = self.connect()
        ok.dataReceived(encodeRequest(3, 1, 1, {"topics": []}))
        self.clock.advance(5)
        self.assertFalse(t2.disconnecting)

    def test_idleConnectionsClosed(self) -> None:
        """connections_max_idle_ms: no request for that long closes; traffic keeps it open."""
        self.makeNode({"connections_max_idle_ms": 1000, "authentication_timeout_ms": 60000})
        busy, t1 = self.connect()
        idle, t2 = self.connect()
        for _ in range(5):
            busy.dataReceived(encodeRequest(18, 0, 1, {}))
            self.clock.advance(0.5)
        self.assertFalse(t1.disconnecting)
        self.assertTrue(t2.disconnecting)
        self.clock.advance(1.1)
        self.assertTrue(t1.disconnecting)

    def test_nodeWideRequestMemory(self) -> None:
        """Bytes held for unfinished requests are bounded node-wide: beyond the bound, the
        later connection is not read until the earlier one's request is complete."""
        self.makeNode({"max_buffered_request_bytes": 4096})
        first, t1 = self.connect()
        second, t2 = self.connect()
        big = encodeRequest(18, 0, 1, {}, clientId="x" * 3000)
        first.dataReceived(big[:100])  # claims the whole 3 KB request
        second.dataReceived(big[:100])  # 6 KB held in all: the second must wait
        self.assertEqual(t1.producerState, "producing")
        self.assertEqual(t2.producerState, "paused")
        first.dataReceived(big[100:])  # complete: answered, released
        self.assertEqual(t2.producerState, "producing")
        second.dataReceived(big[100:])
        self.assertEqual(len(self.responses(t2)), 1)
        self.assertEqual(self.factory.node.memory.total, 0)

    def test_oversizeRequestCloses(self) -> None:
        """A size prefix above max_request_size closes the connection at once."""
        self.makeNode({"max_request_size": 2048})
        proto, t = self.connect()
        proto.dataReceived(struct.pack(">i", 4096))
        self.assertTrue(t.disconnecting)

    def tearDown(self) -> None:
        self.factory.node.groups.stop()


class _GoneTransport(StringTransport):
    """Like a closed TCP transport: no address once the connection is lost."""

    def loseConnection(self) -> None:
        super().loseConnection()
        self.gone = True

    def getHost(self):  # type: ignore[no-untyped-def]
        if getattr(self, "gone", False):
            raise AttributeError("'Server' object has no attribute 'socket'")
        return super().getHost()


class _SlowCreate(MemoryShardStore):
    """A store whose createShard answers a second later (as a disk does, eventually)."""

    def createShard(self, shard, config=None):  # type: ignore[no-untyped-def]
        from twisted.internet import defer

        d = defer.Deferred()
        self._clock.callLater(
            1, lambda: super(_SlowCreate, self).createShard(shard, config).chainDeferred(d)
        )
        return d


class RequestAfterCloseTests(TestCase):
    """Found by bench/fuzz.py: a request finishing after its connection closed raised in
    getHost() (a critical traceback per occurrence)."""

    def test_metadataFinishingAfterTheConnectionClosed(self) -> None:
        clock = Clock()
        settings = settingsFromMapping({})
        store = _SlowCreate(settings.storage, clock=clock)
        store._clock = clock
        store.open()
        broker = Broker(settings, clock, store=store)
        broker.nodeServices["kafka"] = kafkaPlugin.buildNodeService(broker, clock)
        factory = KafkaServerFactory(broker, ListenerSettings(protocol="kafka", port=9092), clock)
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        transport = _GoneTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 9092),
            peerAddress=IPv4Address("TCP", "127.0.0.1", 5000),
        )
        proto.makeConnection(transport)
        for _ in range(3):
            clock.advance(1)  # the node's own shards
        proto.dataReceived(encodeRequest(3, 1, 1, {"topics": [{"name": "new"}]}))
        proto.dataReceived(b"\x7f\xff\xff\xff")  # too large: the node closes at once
        self.assertTrue(transport.gone)
        proto.connectionLost()
        for _ in range(3):
            clock.advance(1)
        self.assertEqual(self.flushLoggedErrors(), [])
