"""Every example that `robustmq ctl COMMAND --help` shows runs, as shown, against a live node.

The examples are read from the help output itself (not from L{robustmq.ctl.EXAMPLES}),
so help and behaviour cannot drift apart: a help text that offers an option the
parser does not take fails here.  The node serves MQTT, Kafka and AMQP, and the
objects the examples name exist first: a persistent MQTT client C{sensor-1}
subscribed to C{sensors/#}, a retained message on C{sensors/kitchen/temp}, the
Kafka topic C{orders} with the group C{billing}, the AMQP queue C{tasks}.
Each example runs in C{sh} (some pipe into ctl) with C{RMQCTL_URL} pointing at
the node, in the order the commands and their examples are listed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pika
import pytest
from adminhelpers import TIMEOUT, Paho, ProtocolNode

BIN = Path(sys.executable).parent
ROBUSTMQ = str(BIN / "robustmq")


def _help(*args: str) -> str:
    result = subprocess.run(
        [ROBUSTMQ, "ctl", *args, "--help"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def commands() -> list[str]:
    """The commands listed under COMMAND by `robustmq ctl --help`."""
    text = _help().split("positional arguments:", 1)[1].split("options:", 1)[0]
    names = re.findall(r"^    ([a-z][a-z-]*)(?:\s|$)", text, re.MULTILINE)
    assert names, text
    return names


def examples(command: str) -> list[str]:
    """The lines under `examples:` in `robustmq ctl COMMAND --help`."""
    text = _help(command)
    if "\nexamples:\n" not in text:
        return []
    block = text.split("\nexamples:\n", 1)[1]
    out = []
    for line in block.splitlines():
        if not line.startswith("  "):
            break
        out.append(line.strip())
    return out


#: The one example that cannot succeed on a single node: it says so with exit code 5.
EXPECTED_EXIT = {"robustmq ctl cluster status": (5, "not in a cluster")}


@pytest.fixture(scope="module")
def node() -> Iterator[ProtocolNode]:
    n = ProtocolNode().start()
    try:
        yield n
    finally:
        n.stop()


def _kafkaFixtures(node: ProtocolNode) -> None:
    from kafka import KafkaConsumer, KafkaProducer

    producer = KafkaProducer(bootstrap_servers=f"127.0.0.1:{node.kafkaPort}", linger_ms=0)
    try:
        for i in range(3):
            producer.send("orders", f"order {i}".encode())
        producer.flush(TIMEOUT)
    finally:
        producer.close()
    consumer = KafkaConsumer(
        "orders",
        bootstrap_servers=f"127.0.0.1:{node.kafkaPort}",
        group_id="billing",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    try:
        got = 0
        deadline = time.monotonic() + 3 * TIMEOUT
        while got < 1 and time.monotonic() < deadline:
            got += sum(len(v) for v in consumer.poll(timeout_ms=500).values())
        assert got >= 1
        consumer.commit()
    finally:
        consumer.close()


def test_every_help_example_runs(node: ProtocolNode) -> None:
    names = commands()
    assert {"kafka", "amqp", "retained", "user"} <= set(names)
    sensor = Paho(node.port, "sensor-1", clean=False)
    sensor.subscribe("sensors/#", 1)
    sensor.publish("sensors/kitchen/temp", b"20.5", qos=1, retain=True)
    _kafkaFixtures(node)
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", node.amqpPort))
    try:
        ch = conn.channel()
        ch.queue_declare("tasks", durable=True)
        ch.basic_publish("", "tasks", b"task")
    finally:
        conn.close()

    env = dict(os.environ, RMQCTL_URL=node.url, PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    ran = []
    try:
        for name in names:
            for example in examples(name):
                assert example.startswith("robustmq ctl ") or "| robustmq ctl " in example
                if example == "robustmq ctl clients kick sensor-1":
                    # The kick closes paho's connection: stop it reconnecting first.
                    sensor.client.reconnect_delay_set(3600, 3600)
                result = subprocess.run(
                    ["sh", "-c", example],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    env=env,
                    stdin=subprocess.DEVNULL,
                )
                code, text = EXPECTED_EXIT.get(example, (0, ""))
                assert result.returncode == code, (example, result.stdout, result.stderr)
                assert text in result.stderr, (example, result.stderr)
                ran.append(example)
    finally:
        sensor.client.disconnect()
        sensor.client.loop_stop()
    assert len(ran) >= 30, ran
    assert any(" kafka " in e for e in ran) and any(" amqp " in e for e in ran)


def test_retained_list_takes_topic_option(node: ProtocolNode) -> None:
    """`retained --help` offers `list [--topic FILTER]`: it works (it was refused)."""
    pub = Paho(node.port, "retained-option")
    try:
        pub.publish("opt/a", b"1", retain=True)
        pub.publish("other/b", b"2", retain=True)
    finally:
        pub.close()
    env = dict(os.environ, RMQCTL_URL=node.url)
    result = subprocess.run(
        [ROBUSTMQ, "ctl", "retained", "list", "--topic", "opt/#"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "opt/a" in result.stdout and "other/b" not in result.stdout


def test_user_add_password_option_and_stdin_without_terminal(node: ProtocolNode) -> None:
    """`user add NAME --password P` sets NAME's password (it clashed with the global
    basic-auth option); with no terminal the password is read from standard input,
    and an empty one is a usage error that says how to give it."""
    env = dict(os.environ, RMQCTL_URL=node.url)

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [ROBUSTMQ, "ctl", *args],
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
        )

    added = run("user", "add", "opt-alice", "--password", "pw-a")
    assert added.returncode == 0, added.stderr
    piped = run("user", "add", "opt-bob", stdin="pw-b\n")
    assert piped.returncode == 0, piped.stderr
    empty = run("user", "add", "opt-carol")
    assert empty.returncode == 2
    assert "give --password PASSWORD" in empty.stderr and "standard input" in empty.stderr

    # The passwords work: MQTT CONNECT with them is accepted by the built-in store.
    for user, password in (("opt-alice", "pw-a"), ("opt-bob", "pw-b")):
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{user}-c")
        c.username_pw_set(user, password)
        c.connect("127.0.0.1", node.port)
        c.disconnect()
    users = run("--json", "user", "list")
    assert "opt-alice" in users.stdout and "opt-bob" in users.stdout
