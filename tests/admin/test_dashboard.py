"""The dashboard in headless Chromium (Debian's package, driven by Playwright).

Checks that the overview shows the connected-client count after a paho client
connects, and that a message sent from the publish form reaches a paho
subscriber.  Saves a screenshot to test-artifacts/dashboard.png.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from adminhelpers import AdminNode, Paho
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
