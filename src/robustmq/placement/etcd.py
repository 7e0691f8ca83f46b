"""The C{etcd} placement backend: etcd v3 (3.4+) through its HTTP/JSON gateway.

Keys and values travel base64-encoded in JSON; 64-bit numbers come back as
strings.  Every key is stored under C{[placement] etcd_prefix}.  Requests go
to the first endpoint of C{[placement] etcd_endpoints} that answers: a
connection failure moves on to the next one (in order, wrapping around).

Watches are streaming C{POST /v3/watch} responses, one JSON message per
line.  A watch that fails or ends (etcd restarted, endpoint lost) reconnects
after a back-off (0.2 s doubling to 5 s) and resumes from the revision after
the last one it reported, so no change is lost or repeated.  If etcd has
compacted that revision away, the watch resumes from the compaction
revision and logs a warning: changes in between are not reported.

Leases are etcd leases (etcd rounds a TTL up to whole seconds and to its
minimum, two seconds for a default single member); leader election is the
generic compare-and-set recipe of L{robustmq.placement.election} (a
transaction on C{create_revision == 0} of a lease-bound key).  Consensus and
durability are etcd's.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import treq
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.error import ConnectError, ConnectingCancelledError, TimeoutError
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool, ResponseFailed
from zope.interface import implementer

from robustmq.interfaces import IPlacementBackend
from robustmq.placement.election import ElectionMixin
from robustmq.placement.errors import BackendUnavailableError, LeaseNotFoundError
from robustmq.placement.kv import KeyValue, Watcher

#: Connection problems that make a request move to the next endpoint.
_UNREACHABLE = (ConnectError, ConnectingCancelledError, TimeoutError, ResponseFailed)


def _cancelled(e: Exception) -> bool:
    """Whether C{e} is, or wraps, a cancellation."""
    if isinstance(e, CancelledError):
        return True
    reasons = getattr(e, "reasons", None) or []
    return any(r.check(CancelledError) for r in reasons)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def prefixEnd(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with C{prefix} (etcd C{range_end})."""
    data = bytearray(prefix)
    while data:
        if data[-1] < 0xFF:
            data[-1] += 1
            return bytes(data)
        data.pop()
    return b"\0"  # every key


class EtcdError(Exception):
    """etcd answered with an error (C{code} is the gRPC status code)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"etcd error {code}: {message}")
        self.code = code
        self.message = message


@implementer(IPlacementBackend)
class EtcdBackend(ElectionMixin):
    """L{IPlacementBackend} on an etcd cluster.

    @param endpoints: base URLs such as C{"http://127.0.0.1:2379"}.
    @param prefix: the namespace of every key in etcd.
    @param timeout: seconds one request may take.
    """

    name = "etcd"
    log = Logger()

    def __init__(
        self,
        endpoints: Sequence[str],
        reactor: Any,
        prefix: str = "/robustmq/",
        timeout: float = 5.0,
    ) -> None:
        if not endpoints:
            raise ValueError("etcd backend needs at least one endpoint")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.reactor = reactor
        self.prefix = prefix
        self.timeout = timeout
        self._current = 0
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = 4
        self._watches: list[_EtcdWatch] = []

    def open(self) -> Deferred[None]:
        async def check() -> None:
            await self._call("/v3/kv/range", {"key": _b64(self.prefix.encode()), "limit": 1})

        return ensureDeferred(check())

    def close(self) -> Deferred[None]:
        async def stop() -> None:
            for watch in list(self._watches):
                watch.stop()
            await self._pool.closeCachedConnections()

        return ensureDeferred(stop())

    # HTTP

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST C{body} to the first reachable endpoint; the decoded answer."""
        payload = json.dumps(body).encode()
        lastError: Exception | None = None
        for attempt in range(len(self.endpoints)):
            index = (self._current + attempt) % len(self.endpoints)
            current: list[Deferred[Any]] = []
            timedOut: list[bool] = []

            def expire(timedOut: list[bool] = timedOut, current: list[Any] = current) -> None:
                timedOut.append(True)
                current[-1].cancel()

            timer = self.reactor.callLater(self.timeout, expire)
            try:
                current.append(
                    treq.post(
                        self.endpoints[index] + path,
                        data=payload,
                        headers={b"Content-Type": [b"application/json"]},
                        pool=self._pool,
                        reactor=self.reactor,
                    )
                )
                response = await current[-1]
                current.append(treq.content(response))
                text = await current[-1]
            except Exception as e:
                if not timedOut and _cancelled(e):
                    raise CancelledError() from None  # our caller gave up
                if not timedOut and not isinstance(e, _UNREACHABLE):
                    raise
                lastError = e
                continue
            finally:
                if timer.active():
                    timer.cancel()
            self._current = index
            try:
                answer = json.loads(text)
            except ValueError:
                raise BackendUnavailableError(
                    f"etcd {self.endpoints[index]}{path}: not JSON (HTTP {response.code})"
                ) from None
            if response.code != 200 or "error" in answer and "header" not in answer:
                raise EtcdError(int(answer.get("code", 0)), str(answer.get("message", text)))
            return answer  # type: ignore[no-any-return]
        raise BackendUnavailableError(f"no etcd endpoint reachable ({lastError})")

    def _key(self, key: str) -> bytes:
        return (self.prefix + key).encode()

    def _kv(self, raw: dict[str, Any]) -> KeyValue:
        return KeyValue(
            _unb64(raw.get("key")).decode()[len(self.prefix) :],
            _unb64(raw.get("value")),
            int(raw.get("create_revision", 0)),
            int(raw.get("mod_revision", 0)),
            int(raw.get("lease", 0)),
        )

    @staticmethod
    def _leaseError(e: EtcdError, lease: int) -> Exception:
        if "lease not found" in e.message:
            return LeaseNotFoundError(lease)
        return e

    # Key-value

    def put(self, key: str, value: bytes, lease: int = 0) -> Deferred[int]:
        async def put() -> int:
            body: dict[str, Any] = {"key": _b64(self._key(key)), "value": _b64(value)}
            if lease:
                body["lease"] = str(lease)
            try:
                answer = await self._call("/v3/kv/put", body)
            except EtcdError as e:
                raise self._leaseError(e, lease) from None
            return int(answer["header"]["revision"])

        return ensureDeferred(put())

    def get(self, key: str) -> Deferred[KeyValue | None]:
        async def get() -> KeyValue | None:
            answer = await self._call("/v3/kv/range", {"key": _b64(self._key(key))})
            kvs = answer.get("kvs") or []
            return self._kv(kvs[0]) if kvs else None

        return ensureDeferred(get())

    def delete(self, key: str) -> Deferred[bool]:
        async def delete() -> bool:
            answer = await self._call("/v3/kv/deleterange", {"key": _b64(self._key(key))})
            return int(answer.get("deleted", 0)) > 0

        return ensureDeferred(delete())

    def list(self, prefix: str) -> Deferred[list[KeyValue]]:
        async def listing() -> list[KeyValue]:
            start = self._key(prefix)
            answer = await self._call(
                "/v3/kv/range", {"key": _b64(start), "range_end": _b64(prefixEnd(start))}
            )
            return [self._kv(raw) for raw in answer.get("kvs") or []]

        return ensureDeferred(listing())

    def compareAndSet(
        self, key: str, expected: bytes | None, value: bytes | None, lease: int = 0
    ) -> Deferred[bool]:
        async def txn() -> bool:
            k = _b64(self._key(key))
            compare: dict[str, Any]
            if expected is None:
                compare = {"key": k, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
            else:
                compare = {"key": k, "target": "VALUE", "result": "EQUAL", "value": _b64(expected)}
            if value is None:
                success: dict[str, Any] = {"request_delete_range": {"key": k}}
            else:
                put: dict[str, Any] = {"key": k, "value": _b64(value)}
                if lease:
                    put["lease"] = str(lease)
                success = {"request_put": put}
            try:
                answer = await self._call(
                    "/v3/kv/txn", {"compare": [compare], "success": [success], "failure": []}
                )
            except EtcdError as e:
                raise self._leaseError(e, lease) from None
            return bool(answer.get("succeeded", False))

        return ensureDeferred(txn())

    # Leases

    def grantLease(self, ttl: float) -> Deferred[int]:
        async def grant() -> int:
            if ttl <= 0:
                raise ValueError(f"lease TTL must be positive, got {ttl}")
            answer = await self._call("/v3/lease/grant", {"TTL": str(math.ceil(ttl)), "ID": "0"})
            return int(answer["ID"])

        return ensureDeferred(grant())

    def keepAlive(self, lease: int) -> Deferred[float]:
        async def keep() -> float:
            answer = await self._call("/v3/lease/keepalive", {"ID": str(lease)})
            ttl = int((answer.get("result") or {}).get("TTL", 0))
            if ttl <= 0:
                raise LeaseNotFoundError(lease)
            return float(ttl)

        return ensureDeferred(keep())

    def revokeLease(self, lease: int) -> Deferred[bool]:
        async def revoke() -> bool:
            try:
                await self._call("/v3/lease/revoke", {"ID": str(lease)})
            except EtcdError as e:
                if "lease not found" in e.message:
                    return False
                raise
            return True

        return ensureDeferred(revoke())

    # Watches

    def watch(
        self, prefix: str, onPut: Callable[[KeyValue], Any], onDelete: Callable[[str], Any]
    ) -> Deferred[Watcher]:
        async def start() -> Watcher:
            answer = await self._call("/v3/kv/range", {"key": _b64(self._key(prefix)), "limit": 1})
            watch = _EtcdWatch(self, prefix, onPut, onDelete, int(answer["header"]["revision"]))
            self._watches.append(watch)
            await watch.connect()
            return watch.watcher

        return ensureDeferred(start())


class _WatchStream(Protocol):
    """Splits a C{/v3/watch} response into JSON messages."""

    def __init__(self, watch: _EtcdWatch) -> None:
        self.watch = watch
        self.buffer = b""
        self.finished: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            if line.strip():
                try:
                    self.watch.message(json.loads(line))
                except Exception:
                    self.watch.log.failure("etcd watch message not understood: {line!r}", line=line)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.finished.callback(None)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()


class _EtcdWatch:
    """One prefix watch that reconnects and resumes after the last revision seen."""

    log = Logger()

    def __init__(
        self,
        backend: EtcdBackend,
        prefix: str,
        onPut: Callable[[KeyValue], Any],
        onDelete: Callable[[str], Any],
        revision: int,
    ) -> None:
        self.backend = backend
        self.prefix = prefix
        self.watcher = Watcher(prefix, onPut, onDelete, lambda w: self.stop())
        self.revision = revision  # the last revision reported (or current at start)
        self.stream: _WatchStream | None = None
        self.request: Deferred[Any] | None = None
        self.created: Deferred[None] | None = None
        self.retry: Any = None
        self.delay = 0.2
        self.stopped = False
        self.established = False

    def connect(self) -> Deferred[None]:
        """Open the stream; the Deferred fires when etcd confirms the watch."""
        self.created = Deferred()
        backend = self.backend
        start = backend._key(self.prefix)
        body = {
            "create_request": {
                "key": _b64(start),
                "range_end": _b64(prefixEnd(start)),
                "start_revision": str(self.revision + 1),
            }
        }
        url = backend.endpoints[backend._current] + "/v3/watch"
        self.request = treq.post(
            url,
            data=json.dumps(body).encode(),
            headers={b"Content-Type": [b"application/json"]},
            unbuffered=True,
            persistent=False,
            reactor=backend.reactor,
        )
        self.request.addCallbacks(self._responded, self._failed)
        return self.created

    def _responded(self, response: Any) -> None:
        self.request = None
        if self.stopped:
            response.deliverBody(Protocol())
            return
        self.stream = _WatchStream(self)
        response.deliverBody(self.stream)
        self.stream.finished.addCallback(
            lambda _: self._failed(Failure(ConnectError("watch stream ended")))
        )

    def message(self, message: dict[str, Any]) -> None:
        if "error" in message:
            raise EtcdError(0, json.dumps(message["error"]))
        result = message.get("result") or {}
        if result.get("created") and self.created is not None and not self.created.called:
            self.delay = 0.2
            self.established = True
            self.created.callback(None)
        if result.get("compact_revision") and result.get("canceled"):
            compacted = int(result["compact_revision"])
            self.log.warn(
                "etcd watch on {prefix}: revisions up to {compacted} compacted; changes before it are not reported",
                prefix=self.prefix,
                compacted=compacted,
            )
            self.revision = compacted - 1
            return
        for event in result.get("events") or []:
            kv = self.backend._kv(event.get("kv") or {})
            self.revision = max(self.revision, kv.modRevision)
            if event.get("type") == "DELETE":
                self.watcher.deliverDelete(kv.key)
            else:
                self.watcher.deliverPut(kv)

    def _failed(self, reason: Failure) -> None:
        self.request = None
        self.stream = None
        if self.stopped:
            return
        if not self.established:
            # The first connection: report the failure to watch()'s caller.
            created = self.created
            self.stop()
            if created is not None and not created.called:
                created.errback(reason)
            return
        self.log.info(
            "etcd watch on {prefix} lost ({error}); reconnecting in {delay}s from revision {revision}",
            prefix=self.prefix,
            error=reason.getErrorMessage(),
            delay=self.delay,
            revision=self.revision + 1,
        )
        backend = self.backend
        backend._current = (
            (backend._current + 1) % len(backend.endpoints)
            if isinstance(reason.value, _UNREACHABLE)
            else backend._current
        )
        self.retry = backend.reactor.callLater(self.delay, self._reconnect)
        self.delay = min(self.delay * 2, 5.0)

    def _reconnect(self) -> None:
        self.retry = None
        if self.stopped:
            return
        self.connect().addErrback(lambda f: None)

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.watcher.active = False
        if self in self.backend._watches:
            self.backend._watches.remove(self)
        if self.retry is not None and self.retry.active():
            self.retry.cancel()
        if self.request is not None:
            self.request.cancel()
        if self.stream is not None:
            self.stream.abort()
        if self.created is not None and not self.created.called:
            self.created.errback(BackendUnavailableError("watch stopped"))


__all__ = ["EtcdBackend", "EtcdError", "prefixEnd"]
