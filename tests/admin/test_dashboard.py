"""The dashboard in headless Chromium (Debian's package, driven by Playwright).

Checks that the overview shows the connected-client count after a paho client
connects, and that a message sent from the publish form reaches a paho
subscriber.  Saves a screenshot to test-artifacts/dashboard.png.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from adminhelpers import AdminNode, Paho, ProtocolNode, waitFor
from playwright.sync_api import expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

#: Playwright waits at most this long (milliseconds) for any one condition.
WAIT_MS = 10_000


@pytest.fixture
def browserPage() -> Iterator[object]:
    assert Path(CHROMIUM).exists(), "install Debian's chromium: sh scripts/install-system-deps.sh"
    profile = tempfile.mkdtemp(prefix="robustmq-chromium-")
    try:
        with sync_playwright() as p:
            # Playwright passes the profile to Chromium as --user-data-dir itself.
            context = p.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                headless=True,
                args=[
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--no-first-run",
                ],
                viewport={"width": 1280, "height": 900},
            )
            try:
                page = context.new_page()
                page.set_default_timeout(WAIT_MS)
                yield page
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def test_overview_counts_clients_and_publish_form_reaches_subscriber(browserPage) -> None:  # type: ignore[no-untyped-def]
    page = browserPage
    node = AdminNode().start()
    sub = None
    try:
        external: list[str] = []
        page.on(
            "request",
            lambda r: None if r.url.startswith(node.url) else external.append(r.url),
        )
        page.goto(node.url + "/")
        expect(page.locator("#stat-connections")).to_have_text("0")

        sub = Paho(node.port, "dashboard-sub")
        sub.subscribe("dashboard/#", 1)
        expect(page.locator("#stat-connections")).to_have_text("1")
        expect(page.locator("#stat-subscriptions")).to_have_text("1")

        page.click("button[data-tab=publish]")
        page.fill("#pub-topic", "dashboard/hello")
        page.fill("#pub-payload", "sent from the dashboard")
        page.select_option("#pub-qos", "1")
        page.click("#pub-submit")
        expect(page.locator("#pub-result")).to_contain_text("reached 1 subscriber")
        msg = sub.expect()
        assert (msg.topic, msg.payload, msg.qos) == (
            "dashboard/hello",
            b"sent from the dashboard",
            1,
        )

        page.click("button[data-tab=clients]")
        expect(page.locator("#clients-table")).to_contain_text("dashboard-sub")

        page.click("button[data-tab=overview]")
        # A few samples so the charts have lines in the screenshot.
        page.wait_for_timeout(4500)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        assert external == [], f"the dashboard fetched from elsewhere: {external}"
    finally:
        if sub is not None:
            sub.close()
        node.stop()


def test_kafka_and_amqp_tabs_and_connections_per_protocol(browserPage) -> None:  # type: ignore[no-untyped-def]
    """The Kafka tab lists topics and groups with their lag (and a lag chart), the AMQP
    tab queues with depth, rates and why messages were dropped, and exchanges; the
    overview counts connections per protocol and says why messages were dropped."""
    import pika
    from kafka.structs import OffsetAndMetadata

    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    page = browserPage
    page.on("dialog", lambda d: d.accept())
    node = ProtocolNode().start()
    amqp = None
    try:
        producer = KafkaProducer(bootstrap_servers=f"127.0.0.1:{node.kafkaPort}", linger_ms=0)
        for i in range(7):
            producer.send("dash-orders", f"o{i}".encode())
        producer.flush(5)
        producer.close()
        consumer = KafkaConsumer(
            bootstrap_servers=f"127.0.0.1:{node.kafkaPort}", group_id="dash-billing"
        )
        consumer.commit({TopicPartition("dash-orders", 0): OffsetAndMetadata(3, "", -1)})
        consumer.close()

        amqp = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", node.amqpPort))
        ch = amqp.channel()
        ch.queue_declare("dash-tasks", arguments={"x-max-length": 4})
        for i in range(6):
            ch.basic_publish("", "dash-tasks", f"t{i}".encode())
        ch.basic_publish("", "dash-nowhere", b"unroutable")

        page.goto(node.url + "/")
        expect(page.locator("#stat-conn-amqp")).to_have_text("1")
        expect(page.locator("#stat-conn-mqtt")).to_have_text("0")
        expect(page.locator("#stat-dropped-why")).to_contain_text("amqp unroutable: 1")
        expect(page.locator("#stat-dropped-why")).to_contain_text("amqp overflow: 2")

        page.click("button[data-tab=kafka]")
        topics = page.locator("#kafka-topics-table")
        expect(topics).to_contain_text("dash-orders")
        expect(topics).to_contain_text("0: 0…7")
        groups = page.locator("#kafka-groups-table")
        expect(groups).to_contain_text("dash-billing")
        expect(groups.locator("div[data-lag='4']")).to_contain_text("dash-orders/0: 4")
        page.wait_for_timeout(2500)  # a second lag sample for the chart
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard-kafka.png"), full_page=True)

        page.click("button[data-tab=amqp]")
        row = page.locator("#amqp-queues-table tr", has_text="dash-tasks")
        expect(row).to_contain_text("overflow: 2")
        expect(row.locator("td").nth(2)).to_have_text("4")
        expect(page.locator("#amqp-exchanges-table")).to_contain_text("amq.topic")
        page.screenshot(path=str(ARTIFACTS / "dashboard-amqp.png"), full_page=True)
        row.locator("button", has_text="Purge").click()
        expect(row.locator("td").nth(2)).to_have_text("0")
        assert node.get("/api/v1/amqp/queues/%2F/dash-tasks")["messages_ready"] == 0
    finally:
        if amqp is not None:
            amqp.close()
        node.stop()


def test_kafka_tab_on_a_node_without_kafka_says_so(browserPage) -> None:  # type: ignore[no-untyped-def]
    page = browserPage
    node = AdminNode().start()
    try:
        page.goto(node.url + "/")
        page.click("button[data-tab=kafka]")
        expect(page.locator("#kafka-note")).to_contain_text("this node serves no Kafka")
        expect(page.locator("#stat-conn-kafka")).to_have_text("off")
    finally:
        node.stop()


def test_websocket_client_page_over_a_real_websocket(browserPage) -> None:  # type: ignore[no-untyped-def]
    """The browser itself connects to ws://.../mqtt with the bundled MQTT.js: it subscribes,
    publishes, and shows messages from itself and from mosquitto_pub as they arrive."""
    page = browserPage
    node = ProtocolNode(ws=True).start()
    listener = None
    try:
        requests: list[str] = []
        page.on("request", lambda r: requests.append(f"{r.method} {r.url}"))
        listener = Paho(node.port, "ws-page-listener")
        listener.subscribe("web/#", 1)

        page.goto(node.url + "/")
        page.click("button[data-tab=websocket]")
        expect(page.locator("#ws-url")).to_have_value(f"ws://127.0.0.1:{node.wsPort}/mqtt")
        page.fill("#ws-client-id", "dashboard-ws")
        page.click("#ws-connect")
        expect(page.locator("#ws-state")).to_have_text(
            f"connected to ws://127.0.0.1:{node.wsPort}/mqtt as dashboard-ws"
        )
        client = waitFor(
            lambda: [
                c
                for c in node.get("/api/v1/clients?client_id=dashboard-ws")["data"]
                if c["client_id"] == "dashboard-ws"
            ],
            "the page's MQTT connection",
        )[0]
        assert client["listener"] == f"mqtt/ws:{node.wsPort}", client

        page.fill("#ws-sub-topic", "web/#")
        page.click("#ws-subscribe")
        expect(page.locator("#ws-subscriptions")).to_contain_text("web/# (QoS 1)")

        page.fill("#ws-pub-topic", "web/from-page")
        page.fill("#ws-pub-payload", "hello from the browser")
        page.click("#ws-publish")
        expect(page.locator("#ws-pub-result")).to_have_text("published to web/from-page (QoS 1)")
        messages = page.locator("#ws-messages")
        expect(messages).to_contain_text("hello from the browser")
        got = listener.expect()
        assert (got.topic, got.payload) == ("web/from-page", b"hello from the browser")

        subprocess.run(
            ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(node.port), "-q", "1"]
            + ["-t", "web/from-cli", "-m", "hello from mosquitto_pub"],
            check=True,
            timeout=10,
        )
        row = messages.locator("tr", has_text="hello from mosquitto_pub")
        expect(row).to_contain_text("web/from-cli")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard-websocket.png"), full_page=True)

        page.click("#ws-disconnect")
        expect(page.locator("#ws-state")).to_have_text("disconnected")
        # Everything went over the WebSocket: the page never used the HTTP publish API,
        # and loaded MQTT.js from the node itself.
        assert not [r for r in requests if "/api/v1/publish" in r], requests
        assert f"GET {node.url}/vendor/mqtt.min.js" in requests
        # (MQTT.js runs its keep-alive timer in a worker made from a blob: URL of the page.)
        elsewhere = [
            r for r in requests if not r.split(" ", 1)[1].removeprefix("blob:").startswith(node.url)
        ]
        assert elsewhere == [], elsewhere
    finally:
        if listener is not None:
            listener.close()
        node.stop()
