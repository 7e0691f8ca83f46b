"""The zope interfaces where RobustMQ's layers meet.

Protocols, storage adapters and authentication sources are plugins: the core
names none of them and finds them through ``twisted.plugin.getPlugins`` over
the ``robustmq.plugins`` package (see :mod:`robustmq.plugins`).
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IProtocolPlugin(Interface):
    """A wire protocol that the broker can serve on listeners.

    The built-in MQTT plugin and third-party ones register the same way: an
    object providing this interface (and ``twisted.plugin.IPlugin``) in a
    module of the ``robustmq.plugins`` package.
    """

    name = Attribute("Short protocol name used in ``[[listeners]] protocol = ...`` (str).")
    defaultPort = Attribute(
        "The standard TCP port of the protocol (int): a listener of this protocol "
        "without ``port`` listens on it."
    )
    transports = Attribute("Names of the transports this protocol can run over (tuple of str).")
    configSection = Attribute(
        "A frozen dataclass for the protocol's own ``[<name>]`` config table, or None. "
        "Its fields are the keys, with defaults; field metadata ``choices``/``min``/"
        "``max``/``doc`` are validated and documented like the built-in sections', "
        "``ROBUSTMQ_<NAME>__<KEY>`` overrides them, and the node reaches the values "
        "with ``settings.section(name)``."
    )

    def buildNodeService(broker, reactor):  # type: ignore[no-untyped-def]
        """
        Build the protocol's node-wide state, shared by all its listeners.

        Called once per node for every protocol the node serves (and for
        protocols another part of the node needs, such as Kafka topics that
        MQTT topics map to), before any listener is built.  The service is
        started after the broker and before the listeners, and stopped after
        the listeners and before the broker, so stopping one listener never
        stops what the others share.  Listeners find it with
        ``broker.nodeService(name)``.

        @param broker: the node's L{robustmq.core.broker.Broker}.
        @param reactor: the reactor to schedule timers on.
        @return: an L{twisted.application.service.IService}, or None when the
            protocol keeps no node-wide state.
        """

    def buildFactory(broker, listener, reactor):  # type: ignore[no-untyped-def]
        """
        Build the protocol factory for one listener.

        @param broker: the node's L{robustmq.core.broker.Broker}.
        @param listener: the L{robustmq.config.ListenerSettings} being started.
        @param reactor: the reactor to schedule timers on.
        @return: an L{twisted.internet.interfaces.IProtocolFactory}.
        """


class IShardStore(Interface):
    """An ordered, append-only log store divided into named shards.

    A *shard* is an ordered log of records, each record a mapping with keys
    ``offset`` (int), ``timestamp`` (int, milliseconds since the epoch),
    ``key`` (bytes or None), ``value`` (bytes or None) and ``headers``
    (list of ``(str, bytes)`` pairs).  MQTT offline queues and retained sets,
    Kafka partitions and durable AMQP queues are all shards.

    Every operation returns a Deferred.  A Deferred from ``append`` fires
    once the records are durable according to the store's sync policy.
    Operations on a shard that does not exist fail with L{KeyError}.
    """

    name = Attribute("The adapter's name as used in ``[storage] backend = ...`` (str).")
    durable = Attribute(
        "True when data survives a restart; the broker persists sessions only into such stores."
    )

    def open():  # type: ignore[no-untyped-def]
        """Open the store (recover on-disk state); fires with None when ready."""

    def close():  # type: ignore[no-untyped-def]
        """Flush everything and release resources; fires with None when done."""

    def createShard(shard, config=None):  # type: ignore[no-untyped-def]
        """
        Create a shard.

        @param shard: the shard name (str).
        @param config: per-shard settings (dict), e.g. ``{"compacted": True,
            "retention_ms": ..., "retention_bytes": ...}``.
        @return: Deferred firing True if created, False if it already existed.
        """

    def deleteShard(shard):  # type: ignore[no-untyped-def]
        """Delete a shard and its records; fires True if it existed."""

    def listShards():  # type: ignore[no-untyped-def]
        """Fire with a dict mapping shard name to its config dict."""

    def append(shard, records):  # type: ignore[no-untyped-def]
        """
        Append a batch of records.

        @param records: a sequence of dicts with optional keys ``timestamp``,
            ``key``, ``value``, ``headers``; offsets are assigned by the store.
        @return: Deferred firing with the list of assigned offsets, once the
            batch is durable per the sync policy.
        """

    def read(shard, offset, maxRecords=1000, maxBytes=1048576):  # type: ignore[no-untyped-def]
        """
        Read records starting at C{offset}.

        At least one record is returned if any exists at or after C{offset},
        even when it alone exceeds C{maxBytes}.

        @return: Deferred firing with a list of record dicts.
        """

    def offsetForTimestamp(shard, timestamp):  # type: ignore[no-untyped-def]
        """Fire with the first offset whose timestamp is >= C{timestamp}, or None."""

    def offsets(shard):  # type: ignore[no-untyped-def]
        """Fire with C{(startOffset, nextOffset)}: first readable and next to assign."""

    def deleteBefore(shard, offset):  # type: ignore[no-untyped-def]
        """Make records before C{offset} unreadable; fires with the new start offset."""

    def upsert(shard, key, value, headers=()):  # type: ignore[no-untyped-def]
        """Keyed write in a compacted shard; fires with the record's offset."""

    def lookup(shard, key):  # type: ignore[no-untyped-def]
        """Fire with the latest record dict for C{key}, or None."""

    def deleteKey(shard, key):  # type: ignore[no-untyped-def]
        """Delete C{key} from a compacted shard (a tombstone); fires True if it existed."""

    def keys(shard):  # type: ignore[no-untyped-def]
        """Fire with the list of live keys of a compacted shard."""

    def commitOffset(group, shard, offset, metadata=b""):  # type: ignore[no-untyped-def]
        """Record a consumer group's committed offset for C{shard}; fires with None."""

    def fetchOffset(group, shard):  # type: ignore[no-untyped-def]
        """Fire with C{(offset, metadata)} committed by C{group}, or None."""


class ISpanShardStore(IShardStore):
    """An L{IShardStore} whose records may occupy a range of offsets (optional).

    A Kafka record batch of I{n} records is one stored record at I{n}
    consecutive offsets: offsets, log start and end, and committed offsets
    keep Kafka's meaning without I{n - 1} placeholder records.  Users test
    for it with C{ISpanShardStore.providedBy(store)}; the memory and segment
    stores provide it.

    With span records in a shard:

      - C{offsets} counts every offset a span occupies (C{nextOffset} is one
        past its last).
      - C{read(shard, offset)} also returns the span record that I{covers}
        C{offset} though it starts below it; its dict has C{"offset"} (its
        first offset) and C{"span"} (the count).  Records of one offset have
        no C{"span"} key.  A reader moves on to C{offset + span}.
      - C{deleteBefore} to an offset inside a span keeps that record
        readable (the start offset is still the one asked for), and
        C{offsetForTimestamp} answers at least the start offset.
      - Record-count bounds (such as the memory store's C{max_records})
        count stored records, not offsets.
      - Compacted shards take no span records (C{ValueError}).
    """

    def appendSpan(shard, record, span):  # type: ignore[no-untyped-def]
        """
        Append one record that occupies C{span} consecutive offsets.

        @param record: a dict as for C{append}.
        @param span: the number of offsets, 1 to 2**31 - 1 (1 is a plain append).
        @return: Deferred firing with the record's first offset, once it is
            durable per the sync policy.
        """


class IShardAdminStore(IShardStore):
    """An L{IShardStore} that can change a shard's config and tell its size (optional).

    Kafka's AlterConfigs changes a topic's C{retention.ms} and
    C{retention.bytes}; a store providing this applies the new bounds to the
    shard from its next retention pass.  DescribeLogDirs reports each
    partition's size.  The memory and segment stores provide it; without it
    a shard keeps the config given at creation and its size is summed from
    its records.
    """

    def shardSize(shard):  # type: ignore[no-untyped-def]
        """Fire with the bytes the shard occupies in the store (framing included)."""

    def configureShard(shard, config):  # type: ignore[no-untyped-def]
        """
        Replace a shard's config (the keys C{createShard} takes, defaults filled in).

        C{compacted} cannot change (C{ValueError} if it would).
        @return: Deferred firing with the normalised config once it is durable.
        """


class IAuthenticator(Interface):
    """A source that decides whether a client may connect.

    Authenticators are tried in configured order; each answers with one of
    L{robustmq.core.auth.ALLOW}, L{robustmq.core.auth.DENY} or
    L{robustmq.core.auth.IGNORE} (let the next one decide).
    """

    name = Attribute("The source's name as used in ``[auth] chain = [...]`` (str).")

    def authenticate(credentials):  # type: ignore[no-untyped-def]
        """
        Decide on one connection attempt.

        @param credentials: a L{robustmq.core.auth.Credentials}.
        @return: Deferred (or plain value) with ALLOW, DENY or IGNORE.
        """


class IAuthenticatorPlugin(Interface):
    """A named factory of L{IAuthenticator}s, discovered as a plugin."""

    name = Attribute("The name used in ``[auth] chain``.")

    def build(settings, security):  # type: ignore[no-untyped-def]
        """
        Return an L{IAuthenticator} configured from the node settings.

        @param security: the node's L{robustmq.core.security.Security} (user
            store, ACL, bans), for sources that need them.
        """


class IAuthMechanism(Interface):
    """One enhanced-authentication exchange (MQTT 5 AUTH, SASL), server side."""

    name = Attribute("The method name, e.g. 'SCRAM-SHA-256' (str).")
    username = Attribute("The authenticated user name once the exchange succeeds.")

    def step(data):  # type: ignore[no-untyped-def]
        """
        Consume the client's next message.

        @return: C{(status, data)}: status C{"continue"} (send data, expect more),
            C{"success"} (send data as the final server message) or C{"failure"}.
        """


class IAuthMechanismPlugin(Interface):
    """A named factory of L{IAuthMechanism} exchanges, discovered as a plugin."""

    name = Attribute("The authentication method name.")

    def build(settings, security):  # type: ignore[no-untyped-def]
        """Return a zero-argument callable making a fresh L{IAuthMechanism}.

        @param security: the node's L{robustmq.core.security.Security}
            (SCRAM keys come from its user store).
        """


class IShardStorePlugin(Interface):
    """A named factory of L{IShardStore}s, discovered as a plugin."""

    name = Attribute("The name used in ``[storage] backend``.")

    def build(settings, reactor):  # type: ignore[no-untyped-def]
        """Return an L{IShardStore} configured from the node settings."""


class IDeliveryTarget(Interface):
    """Something the router delivers matching messages to.

    An MQTT session, a shared-subscription group, an AMQP queue bound to the
    MQTT topic exchange and a Kafka topic mapped to MQTT topics all provide
    it: the router matches a topic against subscriptions and calls
    C{deliver} on each target once, whatever protocol published the
    message and whatever protocol the target serves.
    """

    clientId = Attribute(
        "The client identity of the target for No Local (MQTT-3.8.3-3): a message whose "
        "C{origin} equals it is not delivered to its No Local subscriptions (str or None)."
    )

    def deliver(message, qos, options, outcome):  # type: ignore[no-untyped-def]
        """
        Take C{message} at C{qos}.

        @param message: a L{robustmq.core.message.Message} (shared by every
            target: never change it; copy it to change it).
        @param qos: min(published QoS, granted QoS).
        @param options: the matching L{robustmq.core.subscription.SubscriptionOptions}.
        @param outcome: the L{robustmq.core.outcome.Outcome} of the publish:
            durable writes the publisher's acknowledgement must wait for go
            to C{outcome.wait}, a full queue to C{outcome.congest(self)}.
        """


class ICongestible(Interface):
    """A delivery target that can be congested: publishers that filled it wait for it."""

    congested = Attribute("True while the target's queue is full (bool).")

    def addWaiter(publisher):  # type: ignore[no-untyped-def]
        """C{publisher} paused until this target drains; call its C{congestionCleared(self)}."""

    def removeWaiter(publisher):  # type: ignore[no-untyped-def]
        """C{publisher} went away or stopped waiting."""


class IClusterRouting(Interface):
    """The broker's part in a broker cluster, as the core reaches it.

    Provided by L{robustmq.cluster.node.ClusterNode}; the broker holds it as
    C{broker.cluster} (None on a single node) and calls only these.
    """

    def route(message, outcome):  # type: ignore[no-untyped-def]
        """Deliver C{message} here and forward it to the brokers that want it; returns the
        number of targets, recording writes and congestion in C{outcome}."""

    def routeAdded(key, outcome):  # type: ignore[no-untyped-def]
        """This broker now has a subscription C{key} (a filter or C{$share/<g>/<filter>})."""

    def routeRemoved(key):  # type: ignore[no-untyped-def]
        """This broker no longer has a subscription C{key}."""

    def connectionOpened(connection):  # type: ignore[no-untyped-def]
        """A client connected here."""

    def connectionClosed(connection):  # type: ignore[no-untyped-def]
        """A client connected here went away."""

    def sessionEnded(clientId):  # type: ignore[no-untyped-def]
        """The session of C{clientId} ended here (released in the cluster)."""


class IClusterServices(Interface):
    """What protocols' node services use of the broker cluster (docs/cluster.md).

    Provided by L{robustmq.cluster.node.ClusterNode} beside L{IClusterRouting};
    a node service reaches it as C{broker.cluster} (None on a single node).
    It lets a protocol place its partitions or queues on brokers, share its
    metadata cluster-wide and call other brokers, without importing the
    cluster package: everything goes through the placement center (metadata,
    shard leadership, id blocks) or the broker links (calls).  A node service
    with a C{clusterAddresses()} method (name → short text, e.g. the Kafka
    listener's advertised "host:port") has them published in this broker's
    NodeInfo C{addresses} when it registers.
    """

    nodeId = Attribute("This broker's node id (str).")

    def brokers():  # type: ignore[no-untyped-def]
        """The live brokers, this one included, as L{robustmq.placement.records.NodeInfo}s
        sorted by node id (their C{addresses} carry what each advertises)."""

    def watchNodes(callback):  # type: ignore[no-untyped-def]
        """Call C{callback(info)} on every later node change (alive, dead, addresses)."""

    def callPlacement(method, *args):  # type: ignore[no-untyped-def]
        """Call the placement center's C{method} (setConfig, getConfig, assignShard,
        moveShard, getShard, commitOffset, fetchOffset, allocateIds); a Deferred."""

    def config(prefix):  # type: ignore[no-untyped-def]
        """The cluster config values under C{prefix} as this broker last heard them
        (key → value; an empty value is a deleted entry and is left out)."""

    def watchConfig(prefix, callback):  # type: ignore[no-untyped-def]
        """Call C{callback(key, value)} on every later change under C{prefix}
        (value "" for a deletion)."""

    def shard(name):  # type: ignore[no-untyped-def]
        """The last pushed L{robustmq.placement.records.ShardRecord} of C{name}, or None."""

    def watchShards(prefix, callback):  # type: ignore[no-untyped-def]
        """Call C{callback(record)} for every later shard record whose name starts with
        C{prefix} (leader or epoch changed)."""

    def serve(name, handler):  # type: ignore[no-untyped-def]
        """Let other brokers call C{handler.remote_<method>(caller, *args)} as C{name}
        (C{caller}: the calling broker's node id)."""

    def callBroker(nodeId, name, method, *args, timeout=10.0):  # type: ignore[no-untyped-def]
        """Call C{remote_<method>} of the handler served as C{name} on broker C{nodeId}
        over the broker link (this broker included: a local call); a Deferred.
        Arguments and results must be PB-copyable (str, bytes, numbers, lists, dicts)."""


class ISessionDirectory(Interface):
    """A node's MQTT sessions, as the broker cluster reaches them.

    Provided by the MQTT node service (C{broker.nodeService("mqtt")}); the
    cluster hands sessions over between brokers, adopts a dead broker's
    sessions and distributes shared-subscription messages through it,
    without importing the MQTT protocol package.
    """

    sessions = Attribute(
        "The session registry: get(clientId), iteration, len(), adopt(record, outcome), "
        "export(session), discard(session, outcome=None), takeOverConnection(session, "
        "keepWill), deferWill(session, will, delay)."
    )
    groups = Attribute("Local shared-subscription groups by (group name, filter).")
    persistence = Attribute(
        "Where sessions are stored (core.persistence.SessionPersistence) or None."
    )

    def whenReady():  # type: ignore[no-untyped-def]
        """Fires once persistent sessions are restored from storage."""

    def publishWill(will):  # type: ignore[no-untyped-def]
        """Publish a will message now (nobody acknowledges it)."""

    def group(name, topicFilter):  # type: ignore[no-untyped-def]
        """The local shared group C{$share/<name>/<topicFilter>}, or None."""


class ISessionConnection(Interface):
    """The live connection a broker session delivers through.

    Implemented by each protocol's connection object; the core's session
    calls it without knowing the wire format.
    """

    def deliver(message, qos, packetId, dup, options=None):  # type: ignore[no-untyped-def]
        """
        Write one message to the client at C{qos} (packetId None for QoS 0).

        @param options: the subscription's L{SubscriptionOptions} (RETAIN as
            published, subscription identifiers), or None.
        @return: False if it could not be sent (larger than the client
            accepts: the delivery is complete), else True.
        """

    def deliverRelease(packetId):  # type: ignore[no-untyped-def]
        """Resend a QoS 2 release (PUBREL) for C{packetId} after a reconnect."""

    def canDeliver():  # type: ignore[no-untyped-def]
        """True when the transport can take more data now (not paused)."""

    def takeOver():  # type: ignore[no-untyped-def]
        """Another connection took the session: close this one."""

    def sessionCongested():  # type: ignore[no-untyped-def]
        """This connection's session queue is full: keep reading from it (never pause it)."""

    def congestionCleared(session):  # type: ignore[no-untyped-def]
        """A session this connection published to has drained: reading may resume."""


class IPlacementBackend(Interface):
    """Where the placement center keeps cluster metadata (see docs/cluster.md).

    A key-value store with string keys and byte values (the placement
    records are stored as JSON, see L{robustmq.placement.records}), plus
    leases, prefix watches and leader election.  Every operation returns a
    Deferred.  Values are L{robustmq.placement.kv.KeyValue}s carrying the
    backend's revisions.  Implementations: C{embedded} (SQLite under
    C{<node.data_dir>/placement}, one placement node) and C{etcd} (etcd v3
    through its HTTP/JSON gateway; several placement nodes).
    """

    name = Attribute("The backend's name as used in ``[placement] backend = ...`` (str).")

    def open():  # type: ignore[no-untyped-def]
        """Open the store (recover on-disk state, restore leases); fires with None."""

    def close():  # type: ignore[no-untyped-def]
        """Stop timers and watches, release resources; fires with None."""

    def put(key, value, lease=0):  # type: ignore[no-untyped-def]
        """
        Set C{key} (str) to C{value} (bytes).

        @param lease: a lease id from L{grantLease} the key is attached to
            (0: none); the key is deleted when the lease ends.
        @return: Deferred firing with the new revision (int).
        @raise LeaseNotFoundError: (errback) the lease does not exist.
        """

    def get(key):  # type: ignore[no-untyped-def]
        """Fire with the L{KeyValue} at C{key}, or None."""

    def delete(key):  # type: ignore[no-untyped-def]
        """Delete C{key}; fires True if it existed."""

    def list(prefix):  # type: ignore[no-untyped-def]
        """Fire with every L{KeyValue} whose key starts with C{prefix}, in key order."""

    def compareAndSet(key, expected, value, lease=0):  # type: ignore[no-untyped-def]
        """
        Atomically set C{key} to C{value} if its current value is C{expected}.

        @param expected: the bytes the key must hold, or None: the key must
            not exist.
        @param value: the new bytes, or None to delete the key.
        @return: Deferred firing True if the write happened, False if not.
        """

    def grantLease(ttl):  # type: ignore[no-untyped-def]
        """Fire with a new lease id (int) that ends C{ttl} seconds from now unless kept alive."""

    def keepAlive(lease):  # type: ignore[no-untyped-def]
        """Restart the lease's TTL; fires with the TTL or fails with L{LeaseNotFoundError}."""

    def revokeLease(lease):  # type: ignore[no-untyped-def]
        """End the lease now, deleting its keys; fires True if it existed."""

    def watch(prefix, onPut, onDelete):  # type: ignore[no-untyped-def]
        """
        Call C{onPut(keyValue)} / C{onDelete(key)} for every later change under C{prefix}.

        @return: Deferred firing with an object with a C{stop()} method once
            the watch is in place (changes after that are reported).
        """

    def campaign(election, candidate, lease):  # type: ignore[no-untyped-def]
        """
        Become the leader of C{election} as C{candidate} (str).

        Leadership is bound to C{lease}: it ends when the lease ends.
        @return: Deferred firing once this candidate leads (cancel it to give up).
        """

    def resign(election, candidate):  # type: ignore[no-untyped-def]
        """Give up leadership if C{candidate} holds it; fires True if it did."""

    def leader(election):  # type: ignore[no-untyped-def]
        """Fire with the current leader's candidate string, or None."""

    def observe(election, callback):  # type: ignore[no-untyped-def]
        """Call C{callback(candidate or None)} on every leadership change; like L{watch}."""


class IPlacementBackendPlugin(Interface):
    """A named factory of L{IPlacementBackend}s, discovered as a plugin."""

    name = Attribute("The name used in ``[placement] backend``.")

    def build(settings, reactor):  # type: ignore[no-untyped-def]
        """Return an unopened L{IPlacementBackend} configured from the node settings."""


# -- errors a shard store raises --------------------------------------------
#
# They live here, beside IShardStore, because callers on every layer (the core's
# session persistence, the protocols that map them onto their own error codes)
# must tell them apart without importing a storage adapter.
# L{robustmq.storage.errors} re-exports them for the adapters.


class StorageError(Exception):
    """Base class of every storage failure other than a missing shard."""


class LimitExceededError(StorageError):
    """An operation would take a bounded collection past its configured bound."""


class ShardLimitError(LimitExceededError):
    """C{createShard} was refused: the store already holds C{max_shards} shards."""


class NotCompactedError(StorageError, ValueError):
    """A keyed operation (upsert, lookup, deleteKey, keys) on a shard that is not compacted."""


class CorruptRecordError(StorageError):
    """
    A stored record failed its CRC32C check (or its frame cannot be parsed).

    Raised by a read whose I{first} record would be damaged: records before
    the damage are returned by the read that reaches it, so a reader gets
    everything up to the damage, then this error.  A reader that wants to go
    on reads again from C{lastOffset + 1}.

    @ivar shard: the shard (None if not known).
    @ivar firstOffset: first offset of the damaged range (None if not known).
    @ivar lastOffset: last offset of the damaged range (None if not known).
    """

    def __init__(
        self,
        message: str,
        shard: str | None = None,
        firstOffset: int | None = None,
        lastOffset: int | None = None,
    ) -> None:
        super().__init__(message)
        self.shard = shard
        self.firstOffset = firstOffset
        self.lastOffset = lastOffset


class StorageClosedError(StorageError):
    """The store is not open (never opened, or already closed)."""


class StorageUnavailableError(StorageError):
    """
    The store did not take a write: it refuses writes for now, or (the C{s3}
    store) the object store did not confirm it in time.  The write is not
    acknowledged; protocols answer with their own error (Kafka
    KAFKA_STORAGE_ERROR, AMQP basic.nack, MQTT 5 PUBACK 0x80 or 0x97), never
    with an acknowledgement, and the store keeps working.

    Raised as such by the C{s3} store when the object store did not store a
    write within the configured time (the records may or may not be in the
    bucket: the C{s3} store settles which before its next write to the
    shard).  Its subclasses L{StorageFullError} and L{StorageFailedError}
    (the C{segment} store) guarantee that nothing of the refused write is
    stored.
    """


class StorageFullError(StorageUnavailableError):
    """
    The disk is full (ENOSPC or EDQUOT): writes are refused until space is freed.

    Nothing of a write that failed this way is stored; the store resumes
    writing by itself once enough space is free again.
    """


class ShardFencedError(StorageError):
    """
    Another broker took the shard: this store may no longer write to it.

    The C{s3} store's fencing (docs/storage.md): a writer whose conditional
    PUT finds the sequence number taken by a successor stops writing that
    shard for good, so the log never forks.
    """


class StorageFailedError(StorageUnavailableError):
    """
    An earlier write or fsync to disk failed, so the store refuses further writes.

    A log whose write or fsync failed with an I/O error cannot tell which
    offsets reached the disk; like a Kafka log directory that goes offline,
    the store stops accepting appends until it is reopened (which runs
    recovery).
    """
