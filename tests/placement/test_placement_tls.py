"""The placement service's PB listener over TLS, and the client verifying it (real loopback)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from placementhelpers import sleep, waitFor
from twisted.internet import reactor
from twisted.internet.interfaces import ISSLTransport
from twisted.trial.unittest import TestCase

from robustmq.config import ConfigError, settingsFromMapping
from robustmq.placement.client import PlacementClient
from robustmq.placement.records import NodeInfo
from robustmq.placement.server import PlacementService
from robustmq.transports.testcerts import generateTestCertificates

SECRET = "s3cret-for-tls-tests"

#: Connection attempts a refused client must make before we call it "retrying".
ATTEMPTS = 3


class PlacementTLSTests(TestCase):
    """A TLS placement service (embedded backend) and clients with and without the right CA."""

    heartbeatTimeout = 1.0
    heartbeatInterval = 0.2

    def setUp(self) -> None:
        self.certs = generateTestCertificates(self.mktemp())
        # Another CA with its own server certificate: trusting it proves nothing about ours.
        self.otherCerts = generateTestCertificates(self.mktemp(), caName="Some other CA")

    def placementSettings(self, **overrides: Any) -> dict[str, Any]:
        values: dict[str, Any] = {
            "bind": "127.0.0.1",
            "port": 0,
            "cluster_secret": SECRET,
            "heartbeat_interval": self.heartbeatInterval,
            "heartbeat_timeout": self.heartbeatTimeout,
            "reconnect_max_delay": 0.5,
        }
        values.update(overrides)
        return values

    async def startService(self, **overrides: Any) -> PlacementService:
        if "tls_cert" not in overrides:
            overrides["tls_cert"] = str(self.certs["server"])
            overrides["tls_key"] = str(self.certs["server_key"])
        settings = settingsFromMapping(
            {
                "node": {"data_dir": os.path.abspath(self.mktemp())},
                "placement": self.placementSettings(**overrides),
            }
        )
        service = PlacementService(settings, reactor)
        service.startService()
        await service.ready
        self.addCleanup(self._stop, service)
        return service

    async def _stop(self, service: PlacementService) -> None:
        if service.running:
            await service.stopService()

    def client(self, nodeId: str, service: PlacementService, **overrides: Any) -> PlacementClient:
        """A started client for C{nodeId} (not waited for)."""
        settings = settingsFromMapping(
            {
                "placement": self.placementSettings(
                    servers=[f"127.0.0.1:{service.port}"], **overrides
                )
            }
        )
        info = NodeInfo(nodeId, ("broker",), {"mqtt": "127.0.0.1:1883"}, time.time())
        client = PlacementClient(settings.placement, info, None, reactor)
        client.startService()
        self.addCleanup(client.stopService)
        return client

    async def assertNeverRegisters(self, client: PlacementClient) -> None:
        """C{client} keeps trying to connect and never registers."""
        await waitFor(
            lambda: client.endpoint.index >= ATTEMPTS,
            what=f"{ATTEMPTS} connection attempts",
        )
        self.assertEqual(client.registrations, 0)
        self.assertIsNone(client.perspective)

    async def test_registersAndHeartbeatsOverTLS(self) -> None:
        service = await self.startService()
        client = self.client("node-a", service, tls_ca=str(self.certs["ca"]))
        perspective = await client.whenRegistered()
        transport = perspective.broker.transport
        self.assertTrue(ISSLTransport.providedBy(transport), transport)
        peer = transport.getPeerCertificate().to_cryptography()
        self.assertIn("127.0.0.1", str(peer.extensions))
        for broker in service.factory.connections:
            self.assertTrue(ISSLTransport.providedBy(broker.transport))
        # Heartbeats keep it alive across several timeouts, on one registration.
        await sleep(self.heartbeatTimeout * 3)
        self.assertEqual(await client.call("heartbeat"), self.heartbeatTimeout)
        nodes = await client.call("listNodes")
        self.assertEqual([(n.nodeId, n.state) for n in nodes], [("node-a", "alive")])
        self.assertEqual(client.registrations, 1)

    async def test_keyInsideTheCertificateFile(self) -> None:
        combined = Path(self.mktemp())
        combined.write_bytes(
            self.certs["server"].read_bytes() + self.certs["server_key"].read_bytes()
        )
        service = await self.startService(tls_cert=str(combined))
        client = self.client("node-a", service, tls_ca=str(self.certs["ca"]))
        await client.whenRegistered()
        self.assertEqual(client.registrations, 1)

    async def test_clientTrustingAnotherCANeverRegisters(self) -> None:
        service = await self.startService()
        bad = self.client("node-bad", service, tls_ca=str(self.otherCerts["ca"]))
        await self.assertNeverRegisters(bad)
        # The service is unharmed and never heard of the refused node.
        good = self.client("node-good", service, tls_ca=str(self.certs["ca"]))
        await good.whenRegistered()
        nodes = await good.call("listNodes")
        self.assertEqual([n.nodeId for n in nodes], ["node-good"])
        self.assertEqual(bad.registrations, 0)

    async def test_certificateForAnotherHostRefused(self) -> None:
        # Signed by the CA the client trusts, but not valid for 127.0.0.1.
        elsewhere = generateTestCertificates(self.mktemp(), hosts=("placement.invalid",))
        service = await self.startService(
            tls_cert=str(elsewhere["server"]), tls_key=str(elsewhere["server_key"])
        )
        client = self.client("node-a", service, tls_ca=str(elsewhere["ca"]))
        await self.assertNeverRegisters(client)

    async def test_plainClientAgainstTLSServiceNeverRegisters(self) -> None:
        service = await self.startService()
        plain = self.client("node-plain", service)
        # The service drops it when its handshake deadline passes; it retries.
        await self.assertNeverRegisters(plain)
        good = self.client("node-good", service, tls_ca=str(self.certs["ca"]))
        await good.whenRegistered()
        nodes = await good.call("listNodes")
        self.assertEqual([n.nodeId for n in nodes], ["node-good"])

    async def test_tlsClientAgainstPlainServiceNeverRegisters(self) -> None:
        service = await self.startService(tls_cert="", tls_key="")
        client = self.client("node-a", service, tls_ca=str(self.certs["ca"]))
        await self.assertNeverRegisters(client)

    def test_configErrors(self) -> None:
        with self.assertRaises(ConfigError) as e:
            settingsFromMapping({"placement": {"tls_key": str(self.certs["server_key"])}})
        self.assertIn("placement.tls_key", str(e.exception))
        # A key that is not the certificate's, and a missing certificate.
        for overrides, key in [
            (
                {"tls_cert": str(self.certs["server"]), "tls_key": str(self.certs["client_key"])},
                "placement.tls_key",
            ),
            ({"tls_cert": "/nonexistent/server.pem"}, "placement.tls_cert"),
        ]:
            settings = settingsFromMapping(
                {
                    "node": {"data_dir": os.path.abspath(self.mktemp())},
                    "placement": self.placementSettings(**overrides),
                }
            )
            with self.assertRaises(ConfigError) as e:
                PlacementService(settings, reactor)
            self.assertIn(key, str(e.exception))
        # A client whose CA bundle is missing fails at construction, not on each retry.
        settings = settingsFromMapping(
            {"placement": self.placementSettings(tls_ca="/nonexistent/ca.pem")}
        )
        with self.assertRaises(ConfigError) as e:
            PlacementClient(settings.placement, NodeInfo("node-a", ("broker",)), None, reactor)
        self.assertIn("placement.tls_ca", str(e.exception))
