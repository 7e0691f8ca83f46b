"""The admin HTTP service: binds C{[http] bind:port} and serves L{AdminResource}."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from robustmq.addresses import UNIX, unixServerEndpoint
from robustmq.admin._api import AdminAPI
from robustmq.admin._http import AdminResource, AdminSite, Authenticator, loadStatic
from robustmq.config import Settings
from robustmq.startup import listenFailure

if TYPE_CHECKING:
    from robustmq.core.broker import Broker


class AdminService(Service):
    """Serves the admin API, C{/metrics}, health checks and the dashboard.

    Like the protocol listeners it binds in C{privilegedStartService}, so a
    node whose admin port is taken does not start.

    @param services: the node's service collection; its children that carry
        C{listener} settings and a C{port} are reported as listeners.
    """

    log = Logger()

    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        services: Iterable[Any],
        reactor: Any,
        unixPath: str = "",
    ) -> None:
        """@param unixPath: listen on this Unix socket instead of C{[http] bind:port}
        (a worker process answering its node's admin service, docs/workers.md)."""
        self.settings = settings
        self.unixPath = unixPath
        self.http = settings.http
        self.broker = broker
        self.services = services
        self.reactor = reactor
        self.port: IListeningPort | None = None
        self.api = AdminAPI(broker, settings, self._listenerServices, self.address)
        self.resource = AdminResource(self.api.routes(), Authenticator(self.http), loadStatic())
        self.site = AdminSite(self.resource, self.http.max_body_bytes)
        self.setName("admin-http")

    def _listenerServices(self) -> list[Any]:
        return [
            svc
            for svc in self.services
            if svc is not self and hasattr(svc, "listener") and hasattr(svc, "factory")
        ]

    def address(self) -> tuple[str, int] | None:
        """The bound (host, port), once listening."""
        if self.port is None:
            return None
        host = self.port.getHost()
        if self.unixPath:
            return self.unixPath, 0
        return str(getattr(host, "host", "")), int(getattr(host, "port", 0))

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        bind, port = self.http.bind, self.http.port
        endpoint: Any
        if self.unixPath:
            bind, port = self.unixPath, 0
            endpoint = unixServerEndpoint(self.reactor, UNIX + self.unixPath)
        else:
            endpointType = TCP6ServerEndpoint if ":" in bind else TCP4ServerEndpoint
            endpoint = endpointType(self.reactor, port, interface=bind)
        failures: list[Any] = []
        d = endpoint.listen(self.site)
        d.addCallbacks(self._listening, failures.append)
        if failures:
            raise listenFailure(
                "the admin API ([http])",
                bind,
                port,
                failures[0].value,
                "set [http] port (or [http] enabled = false)",
            )

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        host, bound = self.address() or ("?", 0)
        if self.unixPath:
            self.log.info("admin API for the node on {path}", path=self.unixPath)
            return
        self.log.info(
            "admin API, metrics and dashboard on http://{host}:{port}/ (auth: {auth})",
            host=host,
            port=bound,
            auth=self.http.auth,
        )

    def startService(self) -> None:
        if self.port is None:
            self.privilegedStartService()
        super().startService()

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return defer.maybeDeferred(port.stopListening)
        return None


__all__ = ["AdminService"]
