"""The sans-IO MQTT codec, fed whole and one byte at a time."""

from __future__ import annotations

import pytest

from robustmq.protocols.mqtt import (
    MalformedPacket,
    MQTTParser,
    PacketTooLarge,
    ProtocolViolation,
    encode,
    encodeRemainingLength,
)
from robustmq.protocols.mqtt._packets import (
    MQTT31,
    MQTT311,
    Connack,
    Connect,
    Disconnect,
    Pingreq,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
)

CLIENT_PACKETS = [
    Connect("c1", MQTT311, cleanSession=True, keepAlive=30),
    Connect(
        "c2",
        MQTT31,
        cleanSession=False,
        keepAlive=0,
        willTopic="w/t",
        willPayload=b"gone",
        willQos=2,
        willRetain=True,
        username="u",
        password=b"p\x00w",
    ),
    Publish("a/b", b"payload", 0),
    Publish("a/b", b"", 1, retain=True, packetId=7),
    Publish("\u00e9/x", b"\x00" * 300, 2, dup=True, packetId=65535),
    Puback(1),
    Pubrec(2),
    Pubrel(3),
    Pubcomp(4),
    Subscribe(5, [("a/+", 0), ("b/#", 2)]),
    Unsubscribe(6, ["a/+", "b/#"]),
    Pingreq(),
    Disconnect(),
]

SERVER_PACKETS = [
    Connack(True, 0),
    Connack(False, 5),
    Publish("t", b"x" * 200, 1, packetId=9),
    Suback(5, [0, 1, 2, 0x80]),
    Unsuback(6),
    Pingresp(),
]


def feedBytewise(parser: MQTTParser, data: bytes) -> list:
    out = []
    for i in range(len(data)):
        out += parser.feed(data[i : i + 1])
    return out


@pytest.mark.parametrize("packet", CLIENT_PACKETS, ids=lambda p: type(p).__name__)
def test_clientPacketRoundTrip(packet):
    data = encode(packet)
    assert MQTTParser().feed(data) == [packet]
    assert feedBytewise(MQTTParser(), data) == [packet]


@pytest.mark.parametrize("packet", SERVER_PACKETS, ids=lambda p: type(p).__name__)
def test_serverPacketRoundTrip(packet):
    data = encode(packet)
    assert MQTTParser(server=False).feed(data) == [packet]
    assert feedBytewise(MQTTParser(server=False), data) == [packet]


def test_manyPacketsInOneChunkAndSplitAnywhere():
    stream = b"".join(encode(p) for p in CLIENT_PACKETS)
    assert MQTTParser().feed(stream) == CLIENT_PACKETS
    for cut in range(1, len(stream)):
        parser = MQTTParser()
        got = parser.feed(stream[:cut]) + parser.feed(stream[cut:])
        assert got == CLIENT_PACKETS, cut
        assert parser.buffered == 0


def test_qos0PublishKeepsRawBytes():
    data = encode(Publish("t/x", b"hello"))
    [packet] = MQTTParser().feed(data)
    assert packet.raw == data


def test_remainingLengthEncoding():
    for n, expected in [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16383, b"\xff\x7f"),
        (16384, b"\x80\x80\x01"),
        (268_435_455, b"\xff\xff\xff\x7f"),
    ]:
        assert encodeRemainingLength(n) == expected


def test_largePublishAcrossChunks():
    payload = bytes(range(256)) * 1000
    data = encode(Publish("big", payload, 1, packetId=1))
    parser = MQTTParser()
    got = []
    for i in range(0, len(data), 1000):
        got += parser.feed(data[i : i + 1000])
    assert got == [Publish("big", payload, 1, packetId=1)]


@pytest.mark.parametrize(
    "data, error, statement",
    [
        (b"\x30\xff\xff\xff\xff\x01", MalformedPacket, None),  # 5-byte remaining length
        (b"\x36\x05\x00\x01a\x00\x01", MalformedPacket, "MQTT-3.3.1-4"),  # QoS 3
        (b"\x38\x04\x00\x01ax", MalformedPacket, "MQTT-3.3.1-2"),  # DUP on QoS 0
        (b"\x80\x06\x00\x01\x00\x01a\x00", MalformedPacket, "MQTT-2.2.2-2"),  # SUBSCRIBE flags
        (b"\x82\x02\x00\x01", ProtocolViolation, "MQTT-3.8.3-3"),  # no filters
        (
            b"\x82\x06\x00\x01\x00\x01a\x03",
            MalformedPacket,
            "MQTT-3-8.3-4",
        ),  # QoS 3 (the spec id has this typo)
        (b"\x30\x05\x00\x03a+b", ProtocolViolation, "MQTT-3.3.2-2"),  # wildcard topic
        (b"\x30\x04\x00\x02\xc3\x28", MalformedPacket, "MQTT-1.5.3-1"),  # bad UTF-8
        (b"\x30\x03\x00\x01\x00", MalformedPacket, "MQTT-1.5.3-2"),  # U+0000
        (b"\x32\x05\x00\x01a\x00\x00", ProtocolViolation, "MQTT-2.3.1-1"),  # packet id 0
        (b"\xc0\x01\x00", MalformedPacket, None),  # PINGREQ with a body
        (b"\x20\x02\x00\x00", ProtocolViolation, None),  # CONNACK from a client
        (b"\x00\x00", ProtocolViolation, None),  # reserved type 0
        (b"\x10\x0c\x00\x04MQTT\x04\x03\x00\x3c\x00\x00", MalformedPacket, "MQTT-3.1.2-3"),
        (b"\x10\x0e\x00\x04MQTT\x04\x40\x00\x3c\x00\x00\x00\x00", MalformedPacket, "MQTT-3.1.2-22"),
        (b"\x10\x0c\x00\x04MQTX\x04\x02\x00\x3c\x00\x00", ProtocolViolation, "MQTT-3.1.2-1"),
    ],
)
def test_badInputRaises(data, error, statement):
    with pytest.raises(error) as info:
        MQTTParser().feed(data)
    assert info.value.statement == statement
    # The same verdict when the bytes arrive one at a time.
    with pytest.raises(error):
        feedBytewise(MQTTParser(), data)


def test_oversizePacketRefusedBeforeBuffering():
    parser = MQTTParser(maxPacketSize=100)
    with pytest.raises(PacketTooLarge):
        parser.feed(b"\x30\xe8\x07")  # announces 1000 bytes; nothing else sent yet


def test_unknownProtocolLevelParsesForConnackRefusal():
    data = encode(Connect("x", protocolLevel=MQTT311))
    data = data.replace(b"MQTT\x04", b"MQTT\x06", 1)
    [packet] = MQTTParser().feed(data)
    assert packet.protocolLevel == 6
