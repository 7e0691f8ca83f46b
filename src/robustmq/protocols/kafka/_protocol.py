"""
The Kafka server protocol: one instance per client connection.

Requests are handled one at a time, in arrival order, and each response is
written before the next request starts (Kafka does the same: clients match
responses to requests by order as well as by correlation id).  So a
long-polling Fetch or a JoinGroup waiting for a rebalance holds back the
requests behind it on that connection.  At most C{max_pending_requests}
parsed requests wait; beyond that the socket is not read.

Requests are dispatched by API key to C{handle_<name>} methods
(C{handle_produce}, C{handle_fetch}, ...), each returning the response body
as a dict (or None for no response: Produce with C{acks=0}).

Authentication: SASL (PLAIN, SCRAM) through SaslHandshake/SaslAuthenticate,
or, at the first request that needs it, the node's authentication chain
with no password (C{[auth] allow_anonymous}: anonymous from loopback by
default) and the verified client certificate of a mutual-TLS listener.
A connection that is neither gets its request answered with
SASL_AUTHENTICATION_FAILED in the request's error fields and is closed.
Authorization: the node's Kafka ACL (L{robustmq.core.security.kafkaacl}),
asked through the connection's L{KafkaAccess} in each handler.

Bounds: C{connections_max_idle_ms} closes a connection with no request in
flight for that long (Kafka's C{connections.max.idle.ms}),
C{authentication_timeout_ms} one that has not authenticated in that time,
C{max_pending_requests} parsed requests wait per connection before its
socket is not read, and the node's L{RequestMemory} bounds the bytes held
for unanswered requests over every connection.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from robustmq.core.auth import Credentials
from robustmq.core.scram import FAILURE, SUCCESS, verifyPassword
from robustmq.core.security import KafkaAccess, securityOf
from robustmq.core.security import kafkaacl as K
from robustmq.interfaces import CorruptRecordError, StorageError, StorageUnavailableError
from robustmq.protocols._linger import Linger, linger
from robustmq.protocols.kafka import _acls
from robustmq.protocols.kafka import _errors as E
from robustmq.protocols.kafka._admin import AdminHandlers
from robustmq.protocols.kafka._codec import (
    FrameTooLarge,
    KafkaParser,
    Request,
    UnsupportedVersion,
    apiVersionsBody,
    apiVersionsError,
    decodeRequest,
    encodeResponseParts,
)
from robustmq.protocols.kafka._consumergroups import ConsumerGroupHandlers
from robustmq.protocols.kafka._fetchsessions import FetchPartition
from robustmq.protocols.kafka._records import BatchHeader, InvalidRecord, iterBatches
from robustmq.protocols.kafka._schema import DecodeError, Spliced
from robustmq.protocols.kafka._sharegroups import ShareGroupHandlers
from robustmq.protocols.kafka._topics import GROUPS_SHARD

if TYPE_CHECKING:
    from robustmq.config import ListenerSettings
    from robustmq.protocols.kafka._node import KafkaNode

__all__ = ["KafkaServerProtocol"]

_NO_AUTH_NEEDED = frozenset({17, 18, 36})
_UNKNOWN_OPS = -2147483648


class KafkaServerProtocol(AdminHandlers, ConsumerGroupHandlers, ShareGroupHandlers, Protocol):
    """Serves Kafka requests for one client connection."""

    log = Logger()

    def __init__(self, node: KafkaNode, listener: ListenerSettings) -> None:
        self.node = node
        self.listener = listener
        self.settings = node.settings
        self.parser = KafkaParser(node.settings.max_request_size)
        self._queue: deque[bytes] = deque()
        self._busy = False
        self._running = False
        #: why reading is paused: "pending" (too many queued requests), "memory" (node bound)
        self._pauses: set[str] = set()
        self._closed = False
        self.authenticated = False
        #: the authorization view, once authenticated
        self.access: KafkaAccess | None = None
        #: True once the password-less login (anonymous or certificate) was tried
        self._loginTried = False
        self.saslMechanism: str | None = None
        self.principal: str | None = None
        self._lastActive = 0.0
        self._idleCall: Any = None
        self._authCall: Any = None
        #: bytes of the request being handled (counted by the node's RequestMemory)
        self._inProcess = 0
        self._queuedBytes = 0
        #: the SCRAM exchange in progress, if any
        self._scram: Any = None
        #: authorization in the MQTT topic namespace, for mapped topics (see _access)
        self._topicAccess: Any = None
        #: responses in request order: [ready, parts]; a pipelined Produce fills its slot
        #: when its appends are durable, and those behind it wait for it
        self._outbox: deque[list[Any]] = deque()
        #: fired to end a long-polling Fetch early (another request arrived behind it)
        self._parkedFetch: defer.Deferred[None] | None = None
        self.factory: Any = None
        #: the lingering close once the broker closed the connection (see L{_close})
        self._linger: Linger | None = None

    # -- connection ------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        self.peerHost = getattr(peer, "host", str(peer))
        # Kept now: a request may finish after the socket is gone (bench/fuzz.py found
        # getHost() raising then, for a Metadata that auto-created a topic).
        self._here: Any = self.transport.getHost()  # type: ignore[union-attr]
        #: host:port, and the client.id of the latest request (for admin listings)
        self.peer = f"{self.peerHost}:{getattr(peer, 'port', '')}"
        self.clientId: str | None = None
        self.security = securityOf(self.node.broker)
        # Registered so that listings count it and shutdown closes it.
        self.node.broker.connectionOpened(self)
        reactor = self.node.reactor
        self._lastActive = reactor.seconds()
        self._idleCall = reactor.callLater(
            self.settings.connections_max_idle_ms / 1000, self._idleCheck
        )
        self._authCall = reactor.callLater(
            self.settings.authentication_timeout_ms / 1000, self._authTimeout
        )

    def _idleCheck(self) -> None:
        """Kafka's C{connections.max.idle.ms}: close a connection with nothing going on."""
        self._idleCall = None
        if self._closed:
            return
        reactor = self.node.reactor
        limit = self.settings.connections_max_idle_ms / 1000
        idle = reactor.seconds() - self._lastActive
        if idle < limit or self._busy or self._queue:
            self._idleCall = reactor.callLater(max(limit - idle, 0.01), self._idleCheck)
            return
        self.log.info(
            "{peer}: idle for {ms} ms (connections_max_idle_ms); closing",
            peer=self.peerHost,
            ms=self.settings.connections_max_idle_ms,
        )
        self._close()

    def _authTimeout(self) -> None:
        self._authCall = None
        if self._closed or self.authenticated:
            return
        self.log.warn(
            "{peer}: not authenticated within {ms} ms (authentication_timeout_ms); closing",
            peer=self.peerHost,
            ms=self.settings.authentication_timeout_ms,
        )
        self._close()

    def kick(self, why: str) -> None:
        """A ban now covers this connection: close it (Kafka has no goodbye message)."""
        self.log.info("{peer}: closing: {why}", peer=self.peerHost, why=why)
        self._close()

    def memoryPaused(self, paused: bool) -> None:
        """The node's L{RequestMemory} stops or resumes reading this connection."""
        self._pause("memory", paused)

    def _pause(self, reason: str, paused: bool) -> None:
        before = bool(self._pauses)
        if paused:
            self._pauses.add(reason)
        else:
            self._pauses.discard(reason)
        transport = self.transport
        if transport is None or self._closed or before == bool(self._pauses):
            return
        if self._pauses:
            transport.pauseProducing()  # type: ignore[attr-defined]
        else:
            transport.resumeProducing()  # type: ignore[attr-defined]

    def _held(self) -> None:
        """Tell the node's RequestMemory how many bytes this connection holds now."""
        self.node.memory.update(
            self, self.parser.pendingFrame + self._queuedBytes + self._inProcess
        )

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self._closed = True
        self._queue.clear()
        self._queuedBytes = self._inProcess = 0
        self.node.memory.update(self, 0)
        for call in (self._idleCall, self._authCall):
            if call is not None and call.active():
                call.cancel()
        self._idleCall = self._authCall = None
        self._releaseFetch()
        self.node.broker.connectionClosed(self)
        if self._linger is not None:
            self._linger.ended()
            self._linger = None
        if self.factory is not None:
            self.factory.connectionEnded(self)

    @property
    def username(self) -> str | None:
        """The SASL principal, once authenticated."""
        return self.principal

    def shutdown(self) -> None:
        """The node is stopping: close the connection (Kafka has no goodbye message)."""
        self._close()

    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        self.node.broker.stats.kafkaBytesReceived += len(data)
        self._lastActive = self.node.reactor.seconds()
        try:
            frames = self.parser.feed(data)
        except FrameTooLarge as e:
            self.log.warn("{peer}: {error}; closing", peer=self.peerHost, error=str(e))
            self._close()
            return
        self._queue.extend(frames)
        if frames:
            self._queuedBytes += sum(len(f) for f in frames)
            self._releaseFetch()
        self._held()
        if len(self._queue) >= self.settings.max_pending_requests:
            self._pause("pending", True)
        self._pump()

    def _releaseFetch(self) -> None:
        """End a long-polling Fetch now: requests queued behind it must not wait out its max_wait_ms."""
        d, self._parkedFetch = self._parkedFetch, None
        if d is not None and not d.called:
            d.callback(None)

    def _close(self) -> None:
        """Close after what was written, reading and dropping what the client still
        sends for at most C{close_linger} seconds, so that it reads an error response
        that preceded the close instead of a reset (L{robustmq.protocols._linger})."""
        if self._closed:
            return
        self._closed = True
        self._queue.clear()
        self._queuedBytes = 0
        self.node.memory.update(self, 0)
        self._releaseFetch()
        broker = self.node.broker
        broker.connectionClosed(self)  # no longer a client, even while it lingers
        self._linger = linger(
            self.transport,
            self.node.reactor,
            self.settings.close_linger,
            broker.lingering,
            broker.settings.limits.max_lingering,
        )

    def _pump(self) -> None:
        if self._running:
            return
        self._running = True
        try:
            while (
                self._queue
                and not self._busy
                and not self._closed
                and len(self._outbox) < self.settings.max_pending_requests
            ):
                frame = self._queue.popleft()
                self._queuedBytes -= len(frame)
                self._inProcess = len(frame)
                self._busy = True
                slot: list[Any] = [False, None]
                self._outbox.append(slot)
                defer.ensureDeferred(self._process(frame)).addBoth(self._finished, slot)
        finally:
            self._running = False

    def _finished(self, result: Any, slot: list[Any]) -> None:
        """A request's handler returned: its response, or the rest of its work (L{Later})
        that goes on while the next requests are handled (Kafka pipelining)."""
        self._busy = False
        self._inProcess = 0
        self._lastActive = self.node.reactor.seconds()
        if not self._closed:
            self._held()
        if isinstance(result, Later):
            result.d.addBoth(self._completed, slot)
        else:
            self._completed(result, slot)
        if (
            "pending" in self._pauses
            and len(self._queue) <= self.settings.max_pending_requests // 2
        ):
            self._pause("pending", False)
        self._pump()

    def _completed(self, result: Any, slot: list[Any]) -> None:
        """A request's response is known: write it, and those it held back, in order."""
        if isinstance(result, Failure):
            if result.check(StorageError):
                # the store logged the cause once; no traceback per request
                self.log.warn(
                    "{peer}: request failed: {error}; closing",
                    peer=self.peerHost,
                    error=str(result.value),
                )
            else:
                self.log.failure("{peer}: request failed; closing", result, peer=self.peerHost)
            self._close()
            return
        slot[0] = True
        slot[1] = result
        outbox = self._outbox
        while outbox and outbox[0][0]:
            _, parts = outbox.popleft()
            if self._closed or parts is None:
                continue
            self.node.broker.stats.kafkaBytesSent += sum(len(p) for p in parts)
            try:
                self.transport.writeSequence(parts)  # type: ignore[union-attr]
            except Exception:
                self.log.failure("{peer}: writing a response failed; closing", peer=self.peerHost)
                self._close()
                return
        if not self._closed and not self._busy:
            self._pump()  # a full outbox may have held the next request back

    async def _process(self, frame: bytes) -> list[Any] | Later | None:
        try:
            req = decodeRequest(frame)
        except UnsupportedVersion as e:
            if e.apiKey == 18:
                return [apiVersionsError(e.correlationId)]
            self.log.warn(
                "{peer}: unsupported api {key} version {version}; closing",
                peer=self.peerHost,
                key=e.apiKey,
                version=e.apiVersion,
            )
            self._close()
            return None
        except DecodeError as e:
            self.log.warn(
                "{peer}: malformed request: {error}; closing ({head})",
                peer=self.peerHost,
                error=str(e),
                head=frame[:96].hex(),
            )
            self._close()
            return None
        if req.clientId:
            self.clientId = req.clientId
        if not self.authenticated and req.apiKey == 18 and not self._loginTried:
            # A client's first request: if it may stay anonymous (or its certificate
            # names it), it is authenticated now, so a connection that then idles
            # is closed by connections_max_idle_ms, not the authentication timeout.
            # A refusal waits for the first request that needs authentication.
            self._loginTried = True
            await self._loginWithoutSasl(req.clientId or "")
        if not self.authenticated and req.apiKey not in _NO_AUTH_NEEDED:
            if self.saslMechanism is None and not self._loginTried:
                self._loginTried = True
                await self._loginWithoutSasl(req.clientId or "")
            if not self.authenticated:
                return self._refuseUnauthenticated(req)
        await self.node.ready()
        body = self._deniedOutright(req)
        if body is None:
            handler = getattr(self, "handle_" + req.name)
            body = await handler(req)
        if isinstance(body, Later):
            return Later(body.d.addCallback(self._encodeLater, req))
        if body is None:
            return None
        return encodeResponseParts(req.apiKey, req.apiVersion, req.correlationId, body)

    @staticmethod
    def _encodeLater(body: dict[str, Any] | None, req: Request) -> list[Any] | None:
        if body is None:
            return None
        return encodeResponseParts(req.apiKey, req.apiVersion, req.correlationId, body)

    # -- authentication without SASL, and refusals -----------------------

    async def _loginWithoutSasl(self, clientId: str) -> None:
        """Ask the chain about a client that sent no SASL: anonymous, or its certificate."""
        if self.node.saslRequired:
            return
        certUser = getattr(self.transport, "certificateUsername", None)
        creds = Credentials(
            protocol="kafka",
            clientId=clientId,
            username=certUser,
            password=None,
            peerHost=self.peerHost,
            listener=self.listener.label,
            certificateUsername=certUser,
        )
        if await self.node.auth.authenticate(creds):
            self._loggedIn(certUser, "certificate" if certUser else "anonymous", creds.attributes)

    def _loggedIn(self, user: str | None, how: str, attributes: dict[str, Any]) -> str | None:
        """Authenticated as C{user} (None: anonymous): bans and flapping, then the ACL view.

        Returns why the connection is refused after all (banned), or None.
        """
        why = self.security.admitPeer(user, self.peerHost)
        if why is not None:
            self.log.warn(
                "{peer}: refusing {how} login of {user}: {why}",
                peer=self.peerHost,
                how=how,
                user=user or "ANONYMOUS",
                why=why,
            )
            return why
        self.authenticated = True
        self.principal = user
        self.access = self.security.kafkaAccess(user, self.peerHost, attributes)
        if self._authCall is not None and self._authCall.active():
            self._authCall.cancel()
        self._authCall = None
        return None

    def _refuseUnauthenticated(self, req: Request) -> list[bytes] | None:
        """Answer a request that needs authentication with the SASL error, then close."""
        midHandshake = self.saslMechanism is not None
        code = E.ILLEGAL_SASL_STATE if midHandshake else E.SASL_AUTHENTICATION_FAILED
        message = (
            "SaslAuthenticate expected after SaslHandshake"
            if midHandshake
            else "Authentication required: use SASL (PLAIN, SCRAM) or a client certificate"
        )
        self.log.warn(
            "{peer}: refusing {api} from an unauthenticated client ({why}); closing",
            peer=self.peerHost,
            api=req.name,
            why="mid-handshake" if midHandshake else "no SASL, anonymous not allowed from here",
        )
        self.reactor_close_soon()
        body = _acls.refusal(req, code, message)
        if body is None:
            return None
        return encodeResponseParts(req.apiKey, req.apiVersion, req.correlationId, body)

    # -- helpers ---------------------------------------------------------

    def _deniedOutright(self, req: Request) -> dict[str, Any] | None:
        """The refusal of a request whose whole authorization is one check (the cluster
        for the admin APIs, the group for KIP-848 and share groups), or None."""
        need = _WHOLE_REQUEST.get(req.apiKey)
        if need is None or self.access is None:
            return None
        operation, resourceType, field = need
        name = K.CLUSTER_NAME if field is None else req.body.get(field) or ""
        if self._may(operation, resourceType, name):
            return None
        code = (
            E.CLUSTER_AUTHORIZATION_FAILED
            if resourceType == K.CLUSTER
            else E.GROUP_AUTHORIZATION_FAILED
        )
        self.log.info(
            "{peer}: {api} refused to {who}: not authorized",
            peer=self.peerHost,
            api=req.name,
            who=self.access.principal,
        )
        return _acls.refusal(req, code, "Authorization failed.") or {"error_code": code}

    def _describeResource(
        self, rtype: int, name: str, keys: list[str] | None, synonyms: bool
    ) -> tuple[int, str | None, list[dict[str, Any]]]:
        """DescribeConfigs (and IncrementalAlterConfigs' reads): DESCRIBE_CONFIGS first."""
        code = self._configDenied(rtype, name, K.DESCRIBE_CONFIGS)
        if code is not None:
            return code, "Authorization failed.", []
        return super()._describeResource(rtype, name, keys, synonyms)

    def _checkResource(self, rtype: int, name: str) -> tuple[int, str | None]:
        """(Incremental)AlterConfigs: ALTER_CONFIGS on the resource first."""
        code = self._configDenied(rtype, name, K.ALTER_CONFIGS)
        if code is not None:
            return code, "Authorization failed."
        return super()._checkResource(rtype, name)

    def _configDenied(self, rtype: int, name: str, operation: int) -> int | None:
        """The error for a config operation on a topic (2), broker (4) or group (32)."""
        if rtype == 2:
            return None if self._may(operation, K.TOPIC, name) else E.TOPIC_AUTHORIZATION_FAILED
        if rtype == 4:
            ok = self._may(operation, K.CLUSTER, K.CLUSTER_NAME)
            return None if ok else E.CLUSTER_AUTHORIZATION_FAILED
        if rtype == 32:
            return None if self._may(operation, K.GROUP, name) else E.GROUP_AUTHORIZATION_FAILED
        return None

    async def handle_delete_records(self, req: Request) -> dict[str, Any]:
        """DeleteRecords needs DELETE on each topic (Kafka's rule)."""
        allowed: list[dict[str, Any]] = []
        denied: list[dict[str, Any]] = []
        for t in req.body["topics"]:
            (allowed if self._may(K.DELETE, K.TOPIC, t["name"]) else denied).append(t)
        req.body["topics"] = allowed
        body = await super().handle_delete_records(req)
        for t in denied:
            body["topics"].append(
                {
                    "name": t["name"],
                    "partitions": [
                        {
                            "partition_index": p["partition_index"],
                            "low_watermark": -1,
                            "error_code": E.TOPIC_AUTHORIZATION_FAILED,
                        }
                        for p in t["partitions"]
                    ],
                }
            )
        return body

    def _may(self, operation: int, resourceType: int, name: str) -> bool:
        """May this connection do C{operation} on the resource (the node's Kafka ACL)?"""
        access = self.access
        return access is None or access.allowed(operation, resourceType, name)

    def _advertised(self) -> tuple[str, int]:
        s = self.settings
        here = self._here
        return (s.advertised_host or here.host, s.advertised_port or here.port)

    # -- ApiVersions, Metadata ------------------------------------------

    async def handle_api_versions(self, req: Request) -> dict[str, Any]:
        return apiVersionsBody()

    async def handle_metadata(self, req: Request) -> dict[str, Any]:
        b = req.body
        topics = self.node.topics
        wanted = b["topics"]
        if req.apiVersion == 0 and not wanted:
            wanted = None
        allowCreate = b.get("allow_auto_topic_creation", True)
        out = []
        if wanted is None:
            # Topics the client may not describe are left out (as Kafka does).
            names = [n for n in sorted(topics.topics) if self._may(K.DESCRIBE, K.TOPIC, n)]
        else:
            names = []
            for t in wanted:
                if t.get("name") is not None:
                    names.append(t["name"])
                elif t.get("topic_id") is not None:  # v10+: by id (KIP-516)
                    known = topics.byId.get(t["topic_id"])
                    if known is None:
                        out.append(
                            {
                                "error_code": E.UNKNOWN_TOPIC_ID,
                                "name": None if req.apiVersion >= 12 else "",
                                "topic_id": t["topic_id"],
                                "partitions": [],
                            }
                        )
                    else:
                        names.append(known)
        bid = self.settings.broker_id
        for name in names:
            if not self._may(K.DESCRIBE, K.TOPIC, name):
                out.append(
                    {"error_code": E.TOPIC_AUTHORIZATION_FAILED, "name": name, "partitions": []}
                )
                continue
            if (
                name not in topics.topics
                and allowCreate
                and (
                    self._may(K.CREATE, K.CLUSTER, K.CLUSTER_NAME)
                    or self._may(K.CREATE, K.TOPIC, name)
                )
            ):
                await topics.autoCreate(name)
            t = topics.topics.get(name)
            if t is None:
                out.append(
                    {"error_code": E.UNKNOWN_TOPIC_OR_PARTITION, "name": name, "partitions": []}
                )
                continue
            out.append(
                {
                    "error_code": E.NONE,
                    "name": name,
                    "topic_id": t.topicId,
                    "is_internal": False,
                    "partitions": [
                        {
                            "error_code": E.NONE,
                            "partition_index": p,
                            "leader_id": bid,
                            "leader_epoch": 0,
                            "replica_nodes": [bid],
                            "isr_nodes": [bid],
                            "offline_replicas": [],
                        }
                        for p in range(t.partitions)
                    ],
                }
            )
        host, port = self._advertised()
        return {
            "brokers": [{"node_id": bid, "host": host, "port": port, "rack": None}],
            "cluster_id": self.settings.cluster_id,
            "controller_id": bid,
            "topics": out,
        }

    # -- Produce ---------------------------------------------------------

    async def handle_produce(self, req: Request) -> dict[str, Any] | Later | None:
        b = req.body
        acks = b["acks"]
        topics = self.node.topics
        mappings = self.node.mappings
        txnId = b.get("transactional_id")
        waits: list[tuple[dict[str, Any], defer.Deferred[Any]]] = []
        responses = []
        txnDenied = txnId is not None and not self._may(K.WRITE, K.TRANSACTIONAL_ID, txnId)
        for td in b["topic_data"]:
            name = td["name"]
            mapped = name in mappings.toMqtt
            presp = []
            denied = (
                E.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
                if txnDenied
                else E.TOPIC_AUTHORIZATION_FAILED
                if not self._may(K.WRITE, K.TOPIC, name)
                else None
            )
            for pd in td["partition_data"]:
                r: dict[str, Any] = {"index": pd["index"], "error_code": E.NONE, "base_offset": -1}
                presp.append(r)
                if denied is not None:
                    r["error_code"] = denied
                    continue
                if acks not in (0, 1, -1):
                    r["error_code"] = E.INVALID_REQUIRED_ACKS
                    continue
                part = await topics.partition(name, pd["index"])
                if part is None:
                    r["error_code"] = E.UNKNOWN_TOPIC_OR_PARTITION
                    continue
                data = pd["records"] or b""
                try:
                    batches = list(iterBatches(data))
                except InvalidRecord as e:
                    r["error_code"] = E.CORRUPT_MESSAGE
                    r["error_message"] = str(e)
                    continue
                if mapped and not self._mayPublishMapped(name, data, batches):
                    r["error_code"] = E.TOPIC_AUTHORIZATION_FAILED
                    continue
                first = None
                for h in batches:
                    if h.transactional and not self.node.txns.partitionInTxn(
                        txnId, h.producerId, h.producerEpoch, part.shard
                    ):
                        r["error_code"] = E.INVALID_TXN_STATE
                        break
                    code, dup = topics.checkSequence(part, h)
                    if code != E.NONE:
                        r["error_code"] = code
                        break
                    if dup is not None:
                        base = dup
                    else:
                        base, d = topics.append(part, data[h.start : h.start + h.size], h)
                        if mapped:
                            # Its pump publishes it to MQTT once stored (docs/topic-space.md).
                            mappings.ensurePump(name, pd["index"], base)
                        waits.append((r, d))
                        self.node.broker.stats.kafkaReceived += h.count
                    if first is None:
                        first = base
                r["base_offset"] = first if first is not None else -1
                if r["error_code"] == E.NONE:
                    start, _ = await topics.store.offsets(part.shard)
                    r["log_start_offset"] = start
            responses.append({"name": name, "partition_responses": presp})
        # Offsets are assigned: the next request may start while these become durable
        # (responses still leave in request order; KIP-ready pipelining).
        return Later(defer.ensureDeferred(self._produced(waits, responses, acks)))

    async def _produced(
        self, waits: list[tuple[dict[str, Any], Any]], responses: list[Any], acks: int
    ) -> dict[str, Any] | None:
        """The Produce response once its appends are durable (or failed)."""
        if waits:
            results = await defer.DeferredList([d for _, d in waits], consumeErrors=True)
            for (r, _), (ok, f) in zip(waits, results, strict=True):
                if ok or r["error_code"] != E.NONE:
                    continue
                if f.check(StorageUnavailableError):
                    # The store said why once (disk full, I/O error); the producer
                    # retries on this retriable error and nothing was stored.
                    r["error_code"] = E.KAFKA_STORAGE_ERROR
                    r["error_message"] = str(f.value)
                else:
                    self.log.failure("append failed", f)
                    r["error_code"] = E.UNKNOWN_SERVER_ERROR
        if acks == 0:
            return None
        return {"responses": responses, "throttle_time_ms": 0}

    # -- The MQTT topic space (docs/topic-space.md) ------------------------

    def _access(self) -> Any:
        """This connection's authorization in the MQTT topic namespace (cached)."""
        access = self._topicAccess
        if access is None:
            security = securityOf(self.node.broker)
            access = self._topicAccess = security.access(
                self.clientId or "", self.principal, self.peerHost
            )
        return access

    def _mayPublishMapped(self, topic: str, data: bytes, batches: list[Any]) -> bool:
        """Records of mapped C{topic} become MQTT publishes: the MQTT ACL must allow each."""
        access = self._access()
        if access.trivial and access.acl.isOpen:
            return True  # no rules: nothing to decode records for
        mappings = self.node.mappings
        for h in batches:
            records = mappings.decode(topic, data, h)
            for name in mappings.targetTopics(topic, records or ()):
                if not access.canPublish(name):
                    self.log.info(
                        "{who}: produce to {topic} refused: not authorized to publish "
                        "to MQTT topic {name!r}",
                        who=self.principal or self.peer,
                        topic=topic,
                        name=name,
                    )
                    return False
        return True

    def _mayReadMapped(self, topic: str) -> bool:
        """Reading a topic MQTT messages are mapped to is subscribing its MQTT filter: the
        MQTT ACL must let this client read every topic under it."""
        topicFilter = self.node.mappings.mqttFilterOf(topic)
        if topicFilter is None:
            return True
        if self._access().canReadAll(topicFilter):
            return True
        self.log.info(
            "{who}: fetch from {topic} refused: not authorized to subscribe to {filter!r}",
            who=self.principal or self.peer,
            topic=topic,
            filter=topicFilter,
        )
        return False

    # -- Fetch -----------------------------------------------------------

    async def handle_fetch(self, req: Request) -> dict[str, Any]:
        """Fetch: stored batches as they are, long-polling, with fetch sessions (KIP-227).

        From v13 topics are named by id (KIP-516).  The batches go into the
        response as L{Spliced} parts, written with C{writeSequence} without
        being joined or re-encoded.
        """
        b = req.body
        v = req.apiVersion
        topics = self.node.topics
        reactor = self.node.reactor
        committed = b.get("isolation_level", 0) == 1
        maxWait = min(max(b["max_wait_ms"], 0), self.settings.max_wait_ms) / 1000
        minBytes = b["min_bytes"]
        maxBytes = b.get("max_bytes", 0x7FFFFFFF)
        byIds = v >= 13
        asked: list[FetchPartition] = []
        unknownIds: list[dict[str, Any]] = []
        for t in b["topics"]:
            name = topics.byId.get(t["topic_id"]) if byIds else t["topic"]
            if name is None:
                unknownIds.append(
                    {
                        "topic_id": t["topic_id"],
                        "partitions": [
                            _partitionError(fp["partition"], E.UNKNOWN_TOPIC_ID)
                            for fp in t["partitions"]
                        ],
                    }
                )
                continue
            tid = topics.topics[name].topicId if name in topics.topics else None
            for fp in t["partitions"]:
                asked.append(
                    FetchPartition(
                        name, tid, fp["partition"], fp["fetch_offset"], fp["partition_max_bytes"]
                    )
                )
        forgotten: list[tuple[str, int]] = []
        for t in b.get("forgotten_topics_data") or []:
            name = topics.byId.get(t["topic_id"]) if byIds else t["topic"]
            if name is not None:
                forgotten.extend((name, p) for p in t["partitions"])
        code, session, wanted = self.node.fetchSessions.resolve(
            b.get("session_id", 0), b.get("session_epoch", -1), asked, forgotten
        )
        if code != E.NONE:
            return {
                "throttle_time_ms": 0,
                "error_code": code,
                "session_id": 0,
                "responses": [],
            }
        incremental = session is not None and b.get("session_epoch", -1) > 0
        deadline = reactor.seconds() + maxWait
        for _attempt in range(1000):
            answers, total, parts = await self._fetchOnce(wanted, committed, maxBytes)
            remaining = deadline - reactor.seconds()
            # Responses go out in request order, so a Fetch that waits also delays
            # every request pipelined behind it (ListOffsets, commits, heartbeats):
            # with one queued, answer now with what there is (possibly nothing).
            if total >= max(minBytes, 1) or remaining <= 0 or not parts or self._queue:
                break
            wake: defer.Deferred[None] = defer.Deferred()
            for p in parts:
                p.waiters.append(wake)
            timer = reactor.callLater(remaining, _fire, wake)
            self._parkedFetch = wake
            await wake
            if self._parkedFetch is wake:
                self._parkedFetch = None
            if timer.active():
                timer.cancel()
            for p in parts:
                if wake in p.waiters:
                    p.waiters.remove(wake)
            if self._closed:
                break
        responses: list[dict[str, Any]] = []
        byTopic: dict[str, dict[str, Any]] = {}
        for fp, r in answers:
            if incremental and not (
                r["records"]
                or r["error_code"]
                or (r["high_watermark"], r["last_stable_offset"], r["log_start_offset"])
                != (fp.hw, fp.lso, fp.start)
            ):
                continue  # nothing new for this partition: left out (KIP-227)
            fp.hw, fp.lso, fp.start = (
                r["high_watermark"],
                r["last_stable_offset"],
                r["log_start_offset"],
            )
            t = byTopic.get(fp.topic)
            if t is None:
                t = {"topic": fp.topic, "topic_id": fp.topicId, "partitions": []}
                byTopic[fp.topic] = t
                responses.append(t)
            t["partitions"].append(r)
        return {
            "throttle_time_ms": 0,
            "error_code": E.NONE,
            "session_id": session.sessionId if session is not None else 0,
            "responses": responses + unknownIds,
        }

    async def _fetchOnce(
        self, wanted: list[FetchPartition], committed: bool, maxBytes: int
    ) -> tuple[list[tuple[FetchPartition, dict[str, Any]]], int, list[Any]]:
        topics = self.node.topics
        total = 0
        parts = []
        answers = []
        for fp in wanted:
            r = _partitionError(fp.index, E.NONE)
            answers.append((fp, r))
            if not self._may(K.READ, K.TOPIC, fp.topic):
                r["error_code"] = E.TOPIC_AUTHORIZATION_FAILED
                continue
            part = await topics.partition(fp.topic, fp.index)
            if part is None:
                r["error_code"] = E.UNKNOWN_TOPIC_OR_PARTITION
                continue
            if not self._mayReadMapped(fp.topic):
                r["error_code"] = E.TOPIC_AUTHORIZATION_FAILED
                continue
            parts.append(part)
            start, end = await topics.store.offsets(part.shard)
            lso = part.lastStable()
            r["high_watermark"] = end
            r["last_stable_offset"] = lso
            r["log_start_offset"] = start
            offset = fp.fetchOffset
            if offset < start or offset > end:
                r["error_code"] = E.OFFSET_OUT_OF_RANGE
                continue
            upTo = lso if committed else end
            budget = min(fp.maxBytes, maxBytes - total)
            if budget <= 0 and total:
                continue
            try:
                batches = await topics.read(part, offset, budget, upTo)
            except CorruptRecordError as e:
                # The damaged offsets only: the consumer may seek past e.lastOffset.
                r["error_code"] = E.CORRUPT_MESSAGE
                self.log.debug(
                    "{peer}: fetch at {offset}: {error}",
                    peer=self.peerHost,
                    offset=offset,
                    error=str(e),
                )
                continue
            if committed:
                r["aborted_transactions"] = [
                    {"producer_id": pid, "first_offset": first}
                    for pid, first, last in part.aborted
                    if last >= offset and first < upTo
                ]
            if batches:
                records = Spliced(batches)
                r["records"] = records
                total += records.size
                # Whole batches: one fetched from its middle counts all its records.
                self.node.broker.stats.kafkaSent += sum(
                    h.count for h in map(_header, batches) if not h.control
                )
        return answers, total, parts

    # -- ListOffsets, OffsetForLeaderEpoch ------------------------------

    async def handle_list_offsets(self, req: Request) -> dict[str, Any]:
        topics = self.node.topics
        committed = req.body.get("isolation_level", 0) == 1
        out = []
        for t in req.body["topics"]:
            presp = []
            describable = self._may(K.DESCRIBE, K.TOPIC, t["name"])
            for p in t["partitions"]:
                r: dict[str, Any] = {"partition_index": p["partition_index"], "error_code": E.NONE}
                presp.append(r)
                if not describable:
                    r["error_code"] = E.TOPIC_AUTHORIZATION_FAILED
                    continue
                part = await topics.partition(t["name"], p["partition_index"])
                if part is None:
                    r["error_code"] = E.UNKNOWN_TOPIC_OR_PARTITION
                    continue
                start, end = await topics.store.offsets(part.shard)
                latest = part.lastStable() if committed else end
                ts = p["timestamp"]
                stamp = -1
                if ts == -2:
                    offset = start
                elif ts == -1:
                    offset = latest
                else:
                    try:
                        if ts == -3:  # MAX_TIMESTAMP (KIP-734)
                            found = await topics.maxTimestamp(part, latest)
                        else:
                            found = await topics.offsetForTime(part, ts, latest)
                    except InvalidRecord as e:
                        self.log.warn(
                            "{shard}: unreadable batch in a timestamp lookup: {error}",
                            shard=part.shard,
                            error=str(e),
                        )
                        r["error_code"] = E.CORRUPT_MESSAGE
                        continue
                    offset, stamp = found if found is not None else (-1, -1)
                if req.apiVersion == 0:
                    r["old_style_offsets"] = [offset] if offset >= 0 else []
                else:
                    r["offset"] = offset
                    r["timestamp"] = stamp
                    r["leader_epoch"] = 0
            out.append({"name": t["name"], "partitions": presp})
        return {"throttle_time_ms": 0, "topics": out}

    async def handle_offset_for_leader_epoch(self, req: Request) -> dict[str, Any]:
        topics = self.node.topics
        out = []
        for t in req.body["topics"]:
            presp = []
            for p in t["partitions"]:
                r: dict[str, Any] = {"partition": p["partition"], "error_code": E.NONE}
                part = await topics.partition(t["topic"], p["partition"])
                if not self._may(K.DESCRIBE, K.TOPIC, t["topic"]):
                    r["error_code"] = E.TOPIC_AUTHORIZATION_FAILED
                elif part is None:
                    r["error_code"] = E.UNKNOWN_TOPIC_OR_PARTITION
                else:
                    _, end = await topics.store.offsets(part.shard)
                    # One leader epoch (0) for the partition's whole life.
                    r["leader_epoch"] = 0
                    r["end_offset"] = end if p["leader_epoch"] >= 0 else -1
                presp.append(r)
            out.append({"topic": t["topic"], "partitions": presp})
        return {"throttle_time_ms": 0, "topics": out}

    # -- groups ----------------------------------------------------------

    def _coordinatorDenied(self, keyType: int, key: str) -> int:
        """FindCoordinator: DESCRIBE on the group (0) or transactional id (1), else the error."""
        if keyType == 1:
            ok = self._may(K.DESCRIBE, K.TRANSACTIONAL_ID, key)
            return E.NONE if ok else E.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
        return E.NONE if self._may(K.DESCRIBE, K.GROUP, key) else E.GROUP_AUTHORIZATION_FAILED

    async def handle_find_coordinator(self, req: Request) -> dict[str, Any]:
        host, port = self._advertised()
        bid = self.settings.broker_id
        keyType = req.body.get("key_type", 0)
        if req.apiVersion >= 4:
            out = []
            for k in req.body["coordinator_keys"]:
                code = self._coordinatorDenied(keyType, k)
                if code != E.NONE:
                    out.append(
                        {"key": k, "node_id": -1, "host": "", "port": -1, "error_code": code}
                    )
                else:
                    out.append(
                        {"key": k, "node_id": bid, "host": host, "port": port, "error_code": E.NONE}
                    )
            return {"throttle_time_ms": 0, "coordinators": out}
        code = self._coordinatorDenied(keyType, req.body["key"])
        if code != E.NONE:
            return {
                "throttle_time_ms": 0,
                "error_code": code,
                "node_id": -1,
                "host": "",
                "port": -1,
            }
        return {
            "throttle_time_ms": 0,
            "error_code": E.NONE,
            "node_id": bid,
            "host": host,
            "port": port,
        }

    async def handle_join_group(self, req: Request) -> dict[str, Any]:
        b = req.body
        if not self._may(K.READ, K.GROUP, b["group_id"]):
            return {
                "error_code": E.GROUP_AUTHORIZATION_FAILED,
                "generation_id": -1,
                "member_id": b["member_id"],
                "leader": "",
                "protocol_name": None if req.apiVersion >= 7 else "",
                "members": [],
            }
        body = await self.node.groups.join(
            b["group_id"],
            b["member_id"],
            b.get("group_instance_id"),
            req.clientId or "",
            self.peerHost,
            b["session_timeout_ms"],
            b.get("rebalance_timeout_ms", -1),
            b["protocol_type"],
            [(p["name"], p["metadata"]) for p in b["protocols"]],
            requireKnownMemberId=req.apiVersion >= 4,
        )
        body = dict(body)
        body.setdefault("member_id", b["member_id"])
        body.setdefault("leader", "")
        body.setdefault("protocol_name", None if req.apiVersion >= 7 else "")
        if body.get("protocol_name") is None and req.apiVersion < 7:
            body["protocol_name"] = ""
        return body

    async def handle_sync_group(self, req: Request) -> dict[str, Any]:
        b = req.body
        if not self._may(K.READ, K.GROUP, b["group_id"]):
            return {"error_code": E.GROUP_AUTHORIZATION_FAILED, "assignment": b""}
        body = await self.node.groups.sync(
            b["group_id"],
            b["generation_id"],
            b["member_id"],
            [(a["member_id"], a["assignment"]) for a in b["assignments"]],
        )
        return {"assignment": b"", **body}

    async def handle_heartbeat(self, req: Request) -> dict[str, Any]:
        b = req.body
        if not self._may(K.READ, K.GROUP, b["group_id"]):
            return {"error_code": E.GROUP_AUTHORIZATION_FAILED}
        code = self.node.groups.heartbeat(b["group_id"], b["generation_id"], b["member_id"])
        return {"error_code": code}

    async def handle_leave_group(self, req: Request) -> dict[str, Any]:
        b = req.body
        if not self._may(K.READ, K.GROUP, b["group_id"]):
            return {"error_code": E.GROUP_AUTHORIZATION_FAILED, "members": []}
        if req.apiVersion < 3:
            codes = self.node.groups.leave(b["group_id"], [(b["member_id"], None)])
            return {"error_code": codes[0]}
        members = [(m["member_id"], m.get("group_instance_id")) for m in b["members"]]
        codes = self.node.groups.leave(b["group_id"], members)
        return {
            "error_code": E.NONE,
            "members": [
                {"member_id": m, "group_instance_id": i, "error_code": c}
                for (m, i), c in zip(members, codes, strict=True)
            ],
        }

    async def _rememberGroup(self, group: str) -> None:
        if group not in self.node.knownGroups:
            await self.node.topics.store.upsert(GROUPS_SHARD, group.encode(), b"")
            self.node.knownGroups.add(group)

    async def handle_offset_commit(self, req: Request) -> dict[str, Any]:
        b = req.body
        group = b["group_id"]
        generation = b.get("generation_id_or_member_epoch", -1)
        memberId = b.get("member_id", "")
        code = self.node.consumerGroups.checkCommit(group, memberId, generation)
        if code is None:  # not a KIP-848 group: the classic coordinator decides
            code = self.node.groups.checkCommit(group, generation, memberId)
        if not self._may(K.READ, K.GROUP, group):
            code = E.GROUP_AUTHORIZATION_FAILED
        out = await self._commit(group, b["topics"], code)
        return {"throttle_time_ms": 0, "topics": out}

    async def _commit(
        self, group: str, wanted: list[dict[str, Any]], code: int, pending: list[Any] | None = None
    ) -> list[dict[str, Any]]:
        topics = self.node.topics
        store = topics.store
        if code == E.NONE:
            await self._rememberGroup(group)
        out = []
        for t in wanted:
            presp = []
            topicCode = (
                E.NONE if self._may(K.READ, K.TOPIC, t["name"]) else E.TOPIC_AUTHORIZATION_FAILED
            )
            for p in t["partitions"]:
                c = code if code != E.NONE else topicCode
                if c == E.NONE:
                    part = await topics.partition(t["name"], p["partition_index"])
                    if part is None:
                        c = E.UNKNOWN_TOPIC_OR_PARTITION
                    else:
                        meta = (p.get("committed_metadata") or "").encode()
                        if pending is not None:
                            pending.append((part.shard, p["committed_offset"], meta))
                        else:
                            try:
                                await store.commitOffset(
                                    group, part.shard, p["committed_offset"], meta
                                )
                            except StorageUnavailableError:
                                # retriable: the client commits again later
                                c = E.COORDINATOR_NOT_AVAILABLE
                presp.append({"partition_index": p["partition_index"], "error_code": c})
            out.append({"name": t["name"], "partitions": presp})
        return out

    async def _fetchOffsets(
        self, group: str, wanted: list[dict[str, Any]] | None
    ) -> list[dict[str, Any]]:
        topics = self.node.topics
        store = topics.store
        if wanted is None:
            wanted = [
                {"name": n, "partition_indexes": list(range(t.partitions)), "all": True}
                for n, t in sorted(topics.topics.items())
                if self._may(K.DESCRIBE, K.TOPIC, n)
            ]
        out = []
        for t in wanted:
            presp = []
            describable = self._may(K.DESCRIBE, K.TOPIC, t["name"])
            for idx in t["partition_indexes"]:
                r: dict[str, Any] = {
                    "partition_index": idx,
                    "committed_offset": -1,
                    "metadata": "",
                    "error_code": E.NONE,
                }
                if not describable:
                    r["error_code"] = E.TOPIC_AUTHORIZATION_FAILED
                    presp.append(r)
                    continue
                part = await topics.partition(t["name"], idx)
                if part is not None:
                    got = await store.fetchOffset(group, part.shard)
                    if got is not None:
                        r["committed_offset"] = got[0]
                        r["metadata"] = got[1].decode("utf-8", "replace")
                if t.get("all") and r["committed_offset"] < 0:
                    continue
                presp.append(r)
            if presp or not t.get("all"):
                out.append({"name": t["name"], "partitions": presp})
        return out

    async def handle_offset_fetch(self, req: Request) -> dict[str, Any]:
        b = req.body
        if req.apiVersion >= 8:
            groups = []
            for g in b["groups"]:
                if not self._may(K.DESCRIBE, K.GROUP, g["group_id"]):
                    groups.append(
                        {
                            "group_id": g["group_id"],
                            "topics": [],
                            "error_code": E.GROUP_AUTHORIZATION_FAILED,
                        }
                    )
                    continue
                topicsOut = await self._fetchOffsets(g["group_id"], g["topics"])
                groups.append(
                    {"group_id": g["group_id"], "topics": topicsOut, "error_code": E.NONE}
                )
            return {"throttle_time_ms": 0, "groups": groups}
        if not self._may(K.DESCRIBE, K.GROUP, b["group_id"]):
            return {
                "throttle_time_ms": 0,
                "topics": [],
                "error_code": E.GROUP_AUTHORIZATION_FAILED,
            }
        topicsOut = await self._fetchOffsets(b["group_id"], b["topics"])
        return {"throttle_time_ms": 0, "topics": topicsOut, "error_code": E.NONE}

    async def handle_describe_groups(self, req: Request) -> dict[str, Any]:
        groups = self.node.groups
        out = []
        for g in req.body["groups"]:
            if not self._may(K.DESCRIBE, K.GROUP, g):
                out.append(
                    {
                        "error_code": E.GROUP_AUTHORIZATION_FAILED,
                        "group_id": g,
                        "group_state": "",
                        "protocol_type": "",
                        "protocol_data": "",
                        "members": [],
                    }
                )
                continue
            d = groups.describe(g)
            modern = self.node.consumerGroups.groups.get(g)
            if d["group_state"] == "Dead" and modern is not None:
                # a KIP-848 group seen through the classic API (as Kafka shows it)
                d["group_state"] = modern.state
                d["protocol_type"] = "consumer"
            elif d["group_state"] == "Dead" and g in self.node.knownGroups:
                d["group_state"] = "Empty"
            out.append(d)
        return {"throttle_time_ms": 0, "groups": out}

    async def handle_list_groups(self, req: Request) -> dict[str, Any]:
        groups = self.node.groups.groups
        modern = self.node.consumerGroups.groups
        states = req.body.get("states_filter") or []
        types = {t.lower() for t in req.body.get("types_filter") or []}
        out = []
        share = self.node.shareGroups.groups
        names = set(groups) | set(modern) | set(share) | self.node.knownGroups
        if not self._may(K.DESCRIBE, K.CLUSTER, K.CLUSTER_NAME):
            names = {n for n in names if self._may(K.DESCRIBE, K.GROUP, n)}
        for name in sorted(names):
            g = groups.get(name)
            if name in share:
                state, kind, ptype = share[name].state, "share", "share"
            elif name in modern and (g is None or not g.members):
                state, kind, ptype = modern[name].state, "consumer", "consumer"
            else:
                state = g.state if g is not None else "Empty"
                kind = "classic"
                ptype = (g.protocolType if g is not None else None) or "consumer"
            if (states and state not in states) or (types and kind not in types):
                continue
            out.append(
                {
                    "group_id": name,
                    "protocol_type": ptype,
                    "group_state": state,
                    "group_type": kind,
                }
            )
        return {"throttle_time_ms": 0, "error_code": E.NONE, "groups": out}

    async def handle_delete_groups(self, req: Request) -> dict[str, Any]:
        out = []
        store = self.node.topics.store
        for name in req.body["groups_names"]:
            if not self._may(K.DELETE, K.GROUP, name):
                out.append({"group_id": name, "error_code": E.GROUP_AUTHORIZATION_FAILED})
                continue
            share = await self.node.shareGroups.delete(name)
            if share is not None:  # a share group (KIP-932): it and its state go
                out.append({"group_id": name, "error_code": share})
                continue
            modern = self.node.consumerGroups.delete(name)
            code = modern if modern is not None else self.node.groups.delete(name)
            if code == E.NONE:
                if name in self.node.knownGroups:
                    self.node.knownGroups.discard(name)
                    await store.deleteKey(GROUPS_SHARD, name.encode())
                elif modern is None:
                    code = E.GROUP_ID_NOT_FOUND
            out.append({"group_id": name, "error_code": code})
        return {"throttle_time_ms": 0, "results": out}

    # -- admin -----------------------------------------------------------

    async def handle_create_topics(self, req: Request) -> dict[str, Any]:
        b = req.body
        topics = self.node.topics
        out = []
        for t in b["topics"]:
            configs = {c["name"]: c["value"] for c in t["configs"] if c["value"] is not None}
            n = t["num_partitions"]
            if n == -1 and t["assignments"]:
                n = len(t["assignments"])
            if not (
                self._may(K.CREATE, K.CLUSTER, K.CLUSTER_NAME)
                or self._may(K.CREATE, K.TOPIC, t["name"])
            ):
                out.append(
                    {
                        "name": t["name"],
                        "error_code": E.TOPIC_AUTHORIZATION_FAILED,
                        "error_message": "Topic authorization failed.",
                    }
                )
                continue
            code, msg = await topics.createTopic(
                t["name"], n, configs, b.get("validate_only", False)
            )
            r: dict[str, Any] = {"name": t["name"], "error_code": code, "error_message": msg}
            if code == E.NONE:
                r["num_partitions"] = n if n > 0 else topics.defaultPartitions()
                r["replication_factor"] = 1
                r["configs"] = [
                    {
                        "name": k,
                        "value": v,
                        "read_only": False,
                        "config_source": 1,
                        "is_sensitive": False,
                    }
                    for k, v in configs.items()
                ]
            out.append(r)
        return {"throttle_time_ms": 0, "topics": out}

    async def handle_delete_topics(self, req: Request) -> dict[str, Any]:
        b = req.body
        names = b["topic_names"] if req.apiVersion < 6 else [t["name"] for t in b["topics"]]
        out = []
        for name in names:
            if name is None:
                out.append({"name": None, "error_code": E.UNKNOWN_TOPIC_OR_PARTITION})
                continue
            if not self._may(K.DELETE, K.TOPIC, name):
                out.append({"name": name, "error_code": E.TOPIC_AUTHORIZATION_FAILED})
                continue
            code = await self.node.topics.deleteTopic(name)
            out.append({"name": name, "error_code": code})
        return {"throttle_time_ms": 0, "responses": out}

    async def handle_create_partitions(self, req: Request) -> dict[str, Any]:
        b = req.body
        out = []
        for t in b["topics"]:
            if not self._may(K.ALTER, K.TOPIC, t["name"]):
                out.append(
                    {
                        "name": t["name"],
                        "error_code": E.TOPIC_AUTHORIZATION_FAILED,
                        "error_message": "Topic authorization failed.",
                    }
                )
                continue
            code, msg = await self.node.topics.createPartitions(
                t["name"], t["count"], b["validate_only"]
            )
            out.append({"name": t["name"], "error_code": code, "error_message": msg})
        return {"throttle_time_ms": 0, "results": out}

    # -- ACLs (KIP-140) ----------------------------------------------------

    async def handle_describe_acls(self, req: Request) -> dict[str, Any]:
        assert self.access is not None
        return _acls.describeAcls(self.security.kafkaAcl, self.access, req)

    async def handle_create_acls(self, req: Request) -> dict[str, Any]:
        assert self.access is not None
        return _acls.createAcls(self.security.kafkaAcl, self.access, req)

    async def handle_delete_acls(self, req: Request) -> dict[str, Any]:
        assert self.access is not None
        return _acls.deleteAcls(self.security.kafkaAcl, self.access, req)

    # -- idempotent and transactional producers --------------------------

    async def handle_init_producer_id(self, req: Request) -> dict[str, Any]:
        b = req.body
        txnId = b["transactional_id"]
        if txnId is not None:
            denied = (
                None
                if self._may(K.WRITE, K.TRANSACTIONAL_ID, txnId)
                else E.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
            )
        else:
            # KIP-679: IDEMPOTENT_WRITE on the cluster, or WRITE on any topic.
            access = self.access
            denied = (
                None
                if access is None or access.cluster(K.IDEMPOTENT_WRITE) or access.anyTopic(K.WRITE)
                else E.CLUSTER_AUTHORIZATION_FAILED
            )
        if denied is not None:
            return {
                "throttle_time_ms": 0,
                "error_code": denied,
                "producer_id": -1,
                "producer_epoch": -1,
            }
        code, pid, epoch = await self.node.txns.initProducerId(
            b["transactional_id"], b["transaction_timeout_ms"]
        )
        return {
            "throttle_time_ms": 0,
            "error_code": code,
            "producer_id": pid,
            "producer_epoch": epoch,
        }

    async def handle_add_partitions_to_txn(self, req: Request) -> dict[str, Any]:
        b = req.body
        txns = self.node.txns
        results = []
        txnDenied = not self._may(K.WRITE, K.TRANSACTIONAL_ID, b["v3_and_below_transactional_id"])
        for t in b["v3_and_below_topics"]:
            presp = []
            topicDenied = not self._may(K.WRITE, K.TOPIC, t["name"])
            for p in t["partitions"]:
                part = await self.node.topics.partition(t["name"], p)
                if txnDenied:
                    code = E.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
                elif topicDenied:
                    code = E.TOPIC_AUTHORIZATION_FAILED
                elif part is None:
                    code = E.UNKNOWN_TOPIC_OR_PARTITION
                else:
                    code = await txns.addPartition(
                        b["v3_and_below_transactional_id"],
                        b["v3_and_below_producer_id"],
                        b["v3_and_below_producer_epoch"],
                        part,
                    )
                presp.append({"partition_index": p, "partition_error_code": code})
            results.append({"name": t["name"], "results_by_partition": presp})
        return {"throttle_time_ms": 0, "results_by_topic_v3_and_below": results}

    async def handle_add_offsets_to_txn(self, req: Request) -> dict[str, Any]:
        b = req.body
        if not self._may(K.WRITE, K.TRANSACTIONAL_ID, b["transactional_id"]):
            return {"throttle_time_ms": 0, "error_code": E.TRANSACTIONAL_ID_AUTHORIZATION_FAILED}
        if not self._may(K.READ, K.GROUP, b["group_id"]):
            return {"throttle_time_ms": 0, "error_code": E.GROUP_AUTHORIZATION_FAILED}
        code = await self.node.txns.addGroup(
            b["transactional_id"], b["producer_id"], b["producer_epoch"], b["group_id"]
        )
        return {"throttle_time_ms": 0, "error_code": code}

    async def handle_txn_offset_commit(self, req: Request) -> dict[str, Any]:
        b = req.body
        txns = self.node.txns
        code, pending = txns.pendingOffsets(
            b["transactional_id"], b["producer_id"], b["producer_epoch"], b["group_id"]
        )
        if not self._may(K.WRITE, K.TRANSACTIONAL_ID, b["transactional_id"]):
            code, pending = E.TRANSACTIONAL_ID_AUTHORIZATION_FAILED, None
        elif not self._may(K.READ, K.GROUP, b["group_id"]):
            code, pending = E.GROUP_AUTHORIZATION_FAILED, None
        out = await self._commit(b["group_id"], b["topics"], code, pending)
        if pending is not None:
            await txns.offsetsAdded(b["transactional_id"])
        return {"throttle_time_ms": 0, "topics": out}

    async def handle_end_txn(self, req: Request) -> dict[str, Any]:
        b = req.body
        if not self._may(K.WRITE, K.TRANSACTIONAL_ID, b["transactional_id"]):
            return {"throttle_time_ms": 0, "error_code": E.TRANSACTIONAL_ID_AUTHORIZATION_FAILED}
        code = await self.node.txns.endTxn(
            b["transactional_id"], b["producer_id"], b["producer_epoch"], b["committed"]
        )
        if code == E.NONE:
            groups = self.node.txns.lastGroups
            for g in groups:
                await self._rememberGroup(g)
        return {"throttle_time_ms": 0, "error_code": code}

    # -- SASL ------------------------------------------------------------

    def _mechanisms(self) -> list[str]:
        """PLAIN, then the SCRAM mechanisms the broker has (KIP-84, KIP-152)."""
        scram = [
            m for m in ("SCRAM-SHA-256", "SCRAM-SHA-512") if m in self.node.broker.authMechanisms
        ]
        return ["PLAIN", *scram]

    async def handle_sasl_handshake(self, req: Request) -> dict[str, Any]:
        mech = req.body["mechanism"]
        supported = self._mechanisms()
        if mech not in supported:
            return {"error_code": E.UNSUPPORTED_SASL_MECHANISM, "mechanisms": supported}
        self.saslMechanism = mech
        self._scram = None if mech == "PLAIN" else self.node.broker.authMechanisms[mech]()
        return {"error_code": E.NONE, "mechanisms": supported}

    def _saslFailed(self, user: str | None, why: str) -> dict[str, Any]:
        self.log.warn(
            "{peer}: SASL {mechanism} failed for {user}: {why}",
            peer=self.peerHost,
            mechanism=self.saslMechanism,
            user=user,
            why=why,
        )
        self.saslMechanism = None
        self.reactor_close_soon()
        return {
            "error_code": E.SASL_AUTHENTICATION_FAILED,
            "error_message": "Authentication failed: invalid credentials",
            "auth_bytes": b"",
        }

    async def handle_sasl_authenticate(self, req: Request) -> dict[str, Any]:
        if self.saslMechanism is None:
            self.reactor_close_soon()
            return {"error_code": E.ILLEGAL_SASL_STATE, "error_message": "no SaslHandshake"}
        data = req.body["auth_bytes"]
        if self.saslMechanism != "PLAIN":
            return self._scramStep(data)
        parts = data.split(b"\x00")
        if len(parts) != 3:
            return self._saslFailed(None, "malformed PLAIN message")
        user = parts[1].decode("utf-8", "replace")
        attributes: dict[str, Any] = {}
        if not await self._checkPlain(user, parts[2], req.clientId or "", attributes):
            return self._saslFailed(user, "wrong user name or password")
        return self._saslDone(user, b"", attributes)

    async def _checkPlain(
        self, user: str, password: bytes, clientId: str, attributes: dict[str, Any]
    ) -> bool:
        """A user of the SCRAM table is checked against its stored keys; others by the auth chain."""
        for name in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
            lookup = getattr(self.node.broker.authMechanisms.get(name), "lookup", None)
            stored = lookup(user) if lookup is not None else None
            if stored is not None:
                return verifyPassword(stored, password)
        creds = Credentials(
            protocol="kafka",
            clientId=clientId,
            username=user,
            password=password,
            peerHost=self.peerHost,
            listener=self.listener.label,
            certificateUsername=getattr(self.transport, "certificateUsername", None),
        )
        ok = await self.node.auth.authenticate(creds)
        attributes.update(creds.attributes)
        return ok

    def _scramStep(self, data: bytes) -> dict[str, Any]:
        mech = self._scram
        assert mech is not None
        status, reply = mech.step(data)
        if status == FAILURE:
            claimed = mech.username or getattr(mech, "claimed", None)
            return self._saslFailed(claimed, reply.decode("utf-8", "replace"))
        if status == SUCCESS:
            return self._saslDone(mech.username, reply)
        return {"error_code": E.NONE, "auth_bytes": reply, "session_lifetime_ms": 0}

    def _saslDone(
        self, user: str | None, reply: bytes, attributes: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        mechanism = self.saslMechanism
        self.saslMechanism = None
        self._scram = None
        refused = self._loggedIn(user, f"SASL {mechanism}", attributes or {})
        if refused is not None:
            self.reactor_close_soon()
            return {
                "error_code": E.SASL_AUTHENTICATION_FAILED,
                "error_message": f"Authentication failed: {refused}",
                "auth_bytes": b"",
            }
        self.log.info(
            "{peer}: SASL {mechanism} authenticated {user}",
            peer=self.peerHost,
            mechanism=mechanism,
            user=user,
        )
        return {"error_code": E.NONE, "auth_bytes": reply, "session_lifetime_ms": 0}

    def reactor_close_soon(self) -> None:
        """Close after the current response is written (a failed authentication)."""
        self.node.reactor.callLater(0, self._close)

    def __repr__(self) -> str:
        return f"<KafkaServerProtocol {getattr(self, 'peerHost', '?')}>"


def _partitionError(index: int, code: int) -> dict[str, Any]:
    """A Fetch response partition with no data (yet)."""
    return {
        "partition_index": index,
        "error_code": code,
        "high_watermark": -1,
        "last_stable_offset": -1,
        "log_start_offset": -1,
        "aborted_transactions": None,
        "records": b"",
    }


def _header(batch: bytes) -> BatchHeader:
    return BatchHeader(batch, 0)


#: api key -> (operation, resource type, request field naming the resource; None: the
#: cluster) for requests authorised by one check (Kafka's rules for these APIs)
_WHOLE_REQUEST: dict[int, tuple[int, int, str | None]] = {
    35: (K.DESCRIBE, K.CLUSTER, None),  # DescribeLogDirs
    43: (K.ALTER, K.CLUSTER, None),  # ElectLeaders
    45: (K.ALTER, K.CLUSTER, None),  # AlterPartitionReassignments
    46: (K.DESCRIBE, K.CLUSTER, None),  # ListPartitionReassignments
    50: (K.DESCRIBE, K.CLUSTER, None),  # DescribeUserScramCredentials
    51: (K.ALTER, K.CLUSTER, None),  # AlterUserScramCredentials
    68: (K.READ, K.GROUP, "group_id"),  # ConsumerGroupHeartbeat
    76: (K.READ, K.GROUP, "group_id"),  # ShareGroupHeartbeat
    78: (K.READ, K.GROUP, "group_id"),  # ShareFetch
    79: (K.READ, K.GROUP, "group_id"),  # ShareAcknowledge
}


def _fire(d: defer.Deferred[None]) -> None:
    if not d.called:
        d.callback(None)


class Later:
    """A handler's answer that comes later: the rest of its work runs while the
    connection's next requests are handled, and C{d} fires with the response body
    (None: no response, as for acks=0)."""

    __slots__ = ("d",)

    def __init__(self, d: defer.Deferred[Any]) -> None:
        self.d = d
