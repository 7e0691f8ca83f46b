"""A cluster whose placement service and broker links speak TLS (real processes)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from robustmq.testing.cluster import LocalCluster
from robustmq.testing.paho import PahoClient
from robustmq.transports.testcerts import generateTestCertificates

pytestmark = pytest.mark.timeout(90)


def test_placementAndBrokerLinksOverTLS(tmp_path: Path) -> None:
    certs = generateTestCertificates(tmp_path / "certs")
    tls = {
        "placement": {
            "tls_cert": str(certs["server"]),
            "tls_key": str(certs["server_key"]),
            "tls_ca": str(certs["ca"]),
        }
    }
    uniq = uuid.uuid4().hex[:8]
    with LocalCluster(placements=0, brokers=2, backend="embedded", extraConfig=tls) as cluster:
        b1, b2 = cluster.brokers
        assert "placement service (embedded)" in b1.output()
        for node in (b1, b2):
            assert "(TLS)" in node.output().split("broker link listening on")[1].splitlines()[0]
        sub = PahoClient(b2.port, f"s-{uniq}").connect()
        pub = PahoClient(b1.port, f"p-{uniq}").connect()
        try:
            sub.subscribe(f"t/{uniq}/#", 1)
            deadline = time.monotonic() + 15
            while True:
                pub.publish(f"t/{uniq}/x", b"over tls", 1)
                try:
                    assert sub.expect(0.3).payload == b"over tls"
                    break
                except AssertionError:
                    assert time.monotonic() < deadline, "nothing crossed the TLS broker link"
        finally:
            sub.stop()
            pub.stop()
        assert "linked to broker b1" in b2.output()
