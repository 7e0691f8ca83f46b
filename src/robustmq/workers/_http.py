"""The node's HTTP client for its workers' admin APIs, over their Unix sockets.

Each worker serves its own admin API on C{<run dir>/w<i>.http} (the socket
file is readable and writable by the node's user only; no authentication
on it).  The node's admin service on C{[http] port} answers operators by
asking the workers through this client and combining their answers.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.web.client import (
    Agent,
    FileBodyProducer,
    HTTPConnectionPool,
    _HTTP11ClientFactory,
    readBody,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from robustmq.workers._context import httpPath

#: Seconds a worker has to answer one request.
TIMEOUT = 10.0


class WorkerUnavailable(Exception):
    """The worker did not answer (not running, restarting, or too slow)."""


@implementer(IAgentEndpointFactory)
class _WorkerEndpoints:
    """C{http://w<i>/...} reaches worker I{i}'s socket."""

    def __init__(self, reactor: Any, runDir: str) -> None:
        self.reactor = reactor
        self.runDir = runDir

    def endpointForURI(self, uri: Any) -> UNIXClientEndpoint:
        host = uri.host.decode()
        if not host.startswith("w") or not host[1:].isdigit():
            raise ValueError(f"not a worker: {host!r}")
        return UNIXClientEndpoint(self.reactor, httpPath(self.runDir, int(host[1:])))


class _QuietFactory(_HTTP11ClientFactory):
    """Connections to the workers come and go often: no log line for each."""

    noisy = False


class WorkerResponse:
    """A worker's answer: HTTP status, content type and body."""

    def __init__(self, code: int, contentType: bytes, body: bytes) -> None:
        self.code = code
        self.contentType = contentType
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


class WorkerHTTP:
    """Requests to the workers' admin APIs (persistent connections, bounded in time)."""

    def __init__(self, reactor: Any, runDir: str) -> None:
        self.reactor = reactor
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 4
        self.pool.retryAutomatically = False
        self.pool._factory = _QuietFactory
        self.agent = Agent.usingEndpointFactory(
            reactor, _WorkerEndpoints(reactor, runDir), pool=self.pool
        )

    async def request(
        self,
        index: int,
        method: str,
        target: str,
        body: bytes | None = None,
        contentType: bytes = b"application/json",
        timeout: float = TIMEOUT,
    ) -> WorkerResponse:
        """Send C{method target} (path and query) to worker C{index}.

        @raise WorkerUnavailable: no answer within C{timeout}, or no connection.
        """
        headers = Headers()
        producer = None
        if body is not None:
            headers.addRawHeader(b"content-type", contentType)
            from io import BytesIO

            producer = FileBodyProducer(BytesIO(body))
        d = self.agent.request(
            method.encode(), f"http://w{index}{target}".encode(), headers, producer
        )
        d.addTimeout(timeout, self.reactor)
        try:
            response = await d
            payload = await readBody(response)
        except defer.CancelledError:
            raise WorkerUnavailable(f"worker {index} did not answer within {timeout:g} s") from None
        except Exception as e:
            raise WorkerUnavailable(f"worker {index}: {e}") from None
        types = response.headers.getRawHeaders(b"content-type") or [b"application/json"]
        return WorkerResponse(response.code, types[0], payload)

    async def json(self, index: int, target: str, timeout: float = TIMEOUT) -> Any:
        """GET C{target} from worker C{index} and parse it; a non-200 answer raises."""
        answer = await self.request(index, "GET", target, timeout=timeout)
        if answer.code != 200:
            raise WorkerUnavailable(f"worker {index} answered {answer.code} to {target}")
        return answer.json()

    def close(self) -> defer.Deferred[Any]:
        return self.pool.closeCachedConnections()


__all__ = ["WorkerHTTP", "WorkerResponse", "WorkerUnavailable"]
