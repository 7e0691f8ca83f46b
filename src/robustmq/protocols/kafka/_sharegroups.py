"""
Share groups (KIP-932): Kafka's queues.

Members of a share group join with ShareGroupHeartbeat and are each given
every partition of the topics they subscribe to (KIP-932 lets a partition be
assigned to several members; records, not partitions, are handed out).
ShareFetch acquires records for the fetching member: whole stored batches
are returned with the offset ranges acquired by it and their delivery
counts.  An acquired record is locked for C{share.record.lock.duration.ms};
the member acknowledges it (piggybacked on its next ShareFetch, or with
ShareAcknowledge) as ACCEPT, RELEASE (deliver again) or REJECT.  A released
or timed-out record is delivered again, up to C{share.delivery.count.limit}
deliveries; after that it is archived.  The share-partition start offset
(SPSO) moves past records that are accepted or archived.

Members and share sessions are kept in memory.  The share partitions' state
(SPSO and in-flight records) and the groups themselves are also written to the
node's store (L{robustmq.protocols.kafka._sharestate}) and read back at start,
so a restarted node continues a share group where it was.  At most
C{share_partition_max_record_locks} records lie between a share partition's
SPSO and the end of its in-flight window (KIP-932's bound on in-flight
records): at the bound no new records are acquired from that partition until
the SPSO moves.

ShareGroupDescribe and the share-group offset APIs are served by
L{robustmq.protocols.kafka._shareadmin} over this coordinator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from robustmq.protocols.kafka import _errors as E
from robustmq.protocols.kafka._records import BatchHeader
from robustmq.protocols.kafka._schema import Spliced
from robustmq.protocols.kafka._shareadmin import ShareAdminHandlers
from robustmq.protocols.kafka._sharestate import ShareStateStore, StoredPartition, dumpPartition

if TYPE_CHECKING:
    from robustmq.protocols.kafka._codec import Request
    from robustmq.protocols.kafka._node import KafkaNode
    from robustmq.protocols.kafka._topics import Partition

__all__ = ["ShareGroupCoordinator", "ShareGroupHandlers"]

AVAILABLE, ACQUIRED, ACKNOWLEDGED, ARCHIVED = range(4)
#: AcknowledgeTypes (KIP-932)
GAP, ACCEPT, RELEASE, REJECT = range(4)


class _Record:
    __slots__ = ("state", "count", "owner", "deadline")

    def __init__(self) -> None:
        self.state = AVAILABLE
        self.count = 0
        self.owner: str | None = None
        self.deadline = 0.0


class SharePartition:
    """One partition's records as one share group sees them."""

    def __init__(self, topic: str, index: int, start: int) -> None:
        self.topic = topic
        self.index = index
        #: the share-partition start offset (SPSO): everything below is done
        self.start = start
        #: the first offset never acquired (the end of the in-flight window)
        self.next = start
        #: offset -> state of the records in [start, next) not yet done
        self.records: dict[int, _Record] = {}
        #: the state last written to the store (nothing to write while unchanged)
        self.saved: bytes | None = None

    def available(self) -> list[int]:
        return sorted(o for o, r in self.records.items() if r.state == AVAILABLE)

    def advance(self) -> None:
        """Move the SPSO past records that are acknowledged or archived."""
        while self.start < self.next:
            r = self.records.get(self.start)
            if r is not None and r.state not in (ACKNOWLEDGED, ARCHIVED):
                break
            self.records.pop(self.start, None)
            self.start += 1

    def release(self, r: _Record, limit: int) -> None:
        r.owner = None
        r.state = ARCHIVED if r.count >= limit else AVAILABLE


class _Member:
    __slots__ = ("memberId", "epoch", "topics", "timer", "lastSent", "clientId", "host", "rackId")

    def __init__(self, memberId: str, clientId: str, host: str) -> None:
        self.memberId = memberId
        self.rackId: str | None = None
        self.epoch = 0
        self.topics: list[str] = []
        self.timer: Any = None
        self.lastSent: dict[str, list[int]] | None = None
        self.clientId = clientId
        self.host = host


class _Session:
    __slots__ = ("epoch", "partitions", "timer")

    def __init__(self) -> None:
        #: the epoch the next request must carry
        self.epoch = 1
        self.partitions: dict[tuple[str, int], None] = {}
        #: set once the member left: closes the session if the member does not
        self.timer: Any = None


class ShareGroup:
    """One share group: members, sessions and its share partitions."""

    def __init__(self, groupId: str) -> None:
        self.groupId = groupId
        self.epoch = 0
        self.members: dict[str, _Member] = {}
        self.sessions: dict[str, _Session] = {}
        self.partitions: dict[tuple[str, int], SharePartition] = {}

    @property
    def state(self) -> str:
        return "Stable" if self.members else "Empty"


class ShareGroupCoordinator:
    """Every share group of this node."""

    log = Logger()

    def __init__(self, node: KafkaNode) -> None:
        self.node = node
        self.groups: dict[str, ShareGroup] = {}
        #: the share-group state kept in the node's store (durable stores only)
        self.state = ShareStateStore(node.topics.store, node.topics.persist)
        self._restored = False
        self._restoring: list[defer.Deferred[None]] = []

    # -- state kept in the store ------------------------------------------

    async def restore(self) -> None:
        """Read back the share groups and share partitions of the previous run (once;
        concurrent callers wait for the first)."""
        if self._restored:
            return
        d: defer.Deferred[None] = defer.Deferred()
        self._restoring.append(d)
        if len(self._restoring) == 1:
            defer.ensureDeferred(self._restore()).addBoth(self._restoreDone)
        await d

    def _restoreDone(self, result: Any) -> None:
        waiters, self._restoring = self._restoring, []
        # a failed read is tried again by the next request
        self._restored = not isinstance(result, Failure)
        for d in waiters:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(None)

    async def _restore(self) -> None:
        groups, partitions = await self.state.load()
        limit = self.node.settings.max_groups
        dropped = 0
        for groupId in groups:
            if groupId in self.groups:
                continue
            if len(self.groups) >= limit:
                dropped += 1
                continue
            self.groups[groupId] = ShareGroup(groupId)
        restored = 0
        for stored in partitions:
            group = self.groups.get(stored.groupId)
            if group is None and len(self.groups) < limit:
                group = self.groups[stored.groupId] = ShareGroup(stored.groupId)
            topic = self.node.topics.topics.get(stored.topic)
            if (
                group is None
                or topic is None
                or topic.topicId != stored.topicId
                or not 0 <= stored.index < topic.partitions
            ):
                # the topic is gone (or was recreated): so is the group's state of it
                self.state.background(
                    self.state.forgetPartition(stored.groupId, stored.topic, stored.index),
                    "forgetting the state of a deleted topic",
                )
                continue
            group.partitions[(stored.topic, stored.index)] = self._rebuild(group, stored)
            restored += 1
        if groups or partitions:
            self.log.info(
                "restored {groups} share groups with {partitions} share partitions",
                groups=len(self.groups),
                partitions=restored,
            )
        if dropped:
            self.log.warn(
                "{n} share groups not restored: max_groups ({limit}) reached",
                n=dropped,
                limit=limit,
            )

    def _rebuild(self, group: ShareGroup, stored: StoredPartition) -> SharePartition:
        sp = SharePartition(stored.topic, stored.index, stored.start)
        sp.next = stored.next
        limit = self.deliveryLimit(group.groupId)
        for first, last, state, count in stored.runs:
            for o in range(max(first, sp.start), min(last, sp.next - 1) + 1):
                r = sp.records[o] = _Record()
                r.state = state if state in (AVAILABLE, ACKNOWLEDGED, ARCHIVED) else ACQUIRED
                r.count = count
                if r.state == ACQUIRED:
                    # its holder is gone with the previous run: as if its lock ran out
                    sp.release(r, limit)
        # offsets of the window without a stored state are delivered again
        for o in range(sp.start, sp.next):
            sp.records.setdefault(o, _Record())
        sp.advance()
        return sp

    def _dump(self, sp: SharePartition) -> bytes | None:
        topic = self.node.topics.topics.get(sp.topic)
        if topic is None:
            return None
        return dumpPartition(sp.start, sp.next, sp.records, topic.topicId)

    async def save(self, group: ShareGroup, sp: SharePartition) -> bool:
        """Write C{sp}'s state if it changed since the last write; False if the write failed
        (logged; it is tried again with the next change)."""
        if not self.state.enabled:
            return True
        value = self._dump(sp)
        if value is None or value == sp.saved:
            return True
        sp.saved = value
        try:
            await _wait(self.state.savePartition(group.groupId, sp.topic, sp.index, value))
        except Exception:
            sp.saved = None
            self.log.failure(
                "share group {group}: writing the state of {topic}-{index} failed",
                group=group.groupId,
                topic=sp.topic,
                index=sp.index,
            )
            return False
        return True

    def _forgetPartition(
        self, group: ShareGroup, key: tuple[str, int]
    ) -> defer.Deferred[Any] | None:
        sp = group.partitions.pop(key, None)
        if sp is None:
            return None
        for r in sp.records.values():
            r.owner = None
        return self.state.forgetPartition(group.groupId, key[0], key[1])

    def topicDeleted(self, name: str) -> None:
        """A topic was deleted: every group forgets its share partitions of it (KIP-932)."""
        for group in self.groups.values():
            for key in [k for k in group.partitions if k[0] == name]:
                self.state.background(
                    self._forgetPartition(group, key), "forgetting a deleted topic"
                )

    # -- configs ----------------------------------------------------------

    def _config(self, groupId: str, key: str, brokerKey: str | None, default: Any) -> Any:
        own = self.node.configs.groups.get(groupId, {})
        if key in own:
            return own[key]
        if brokerKey is not None and brokerKey in self.node.configs.broker:
            return self.node.configs.broker[brokerKey]
        return default

    def lockMs(self, groupId: str) -> int:
        s = self.node.settings
        return int(
            self._config(
                groupId,
                "share.record.lock.duration.ms",
                "group.share.record.lock.duration.ms",
                s.share_record_lock_duration_ms,
            )
        )

    def deliveryLimit(self, groupId: str) -> int:
        s = self.node.settings
        return int(
            self._config(
                groupId,
                "share.delivery.count.limit",
                "group.share.delivery.count.limit",
                s.share_delivery_count_limit,
            )
        )

    # -- membership (ShareGroupHeartbeat) ---------------------------------

    def heartbeat(self, b: dict[str, Any], clientId: str, host: str) -> dict[str, Any]:
        """Handle one ShareGroupHeartbeat request body."""
        s = self.node.settings
        groupId, memberId, epoch = b["group_id"], b["member_id"], b["member_epoch"]
        out: dict[str, Any] = {"throttle_time_ms": 0, "error_code": E.NONE}
        if not groupId or not memberId:
            return {
                **out,
                "error_code": E.INVALID_REQUEST,
                "error_message": "group and member ids are required",
            }
        classic = self.node.groups.groups.get(groupId)
        modern = self.node.consumerGroups.groups.get(groupId)
        if (classic is not None and classic.members) or (modern is not None and modern.members):
            return {
                **out,
                "error_code": E.INCONSISTENT_GROUP_PROTOCOL,
                "error_message": f"{groupId} is a consumer group",
            }
        group = self.groups.get(groupId)
        if epoch == -1:
            if group is not None and memberId in group.members:
                self._remove(group, group.members[memberId], "left")
            return {**out, "member_id": memberId, "member_epoch": -1}
        if group is None:
            if len(self.groups) >= s.max_groups:
                return {**out, "error_code": E.COORDINATOR_NOT_AVAILABLE}
            group = self.groups[groupId] = ShareGroup(groupId)
            self.state.background(self.state.saveGroup(groupId), "saving a new share group")
        member = group.members.get(memberId)
        if epoch == 0:
            if member is None:
                if len(group.members) >= s.max_group_members:
                    return {**out, "error_code": E.GROUP_MAX_SIZE_REACHED}
                member = _Member(memberId, clientId, host)
                group.members[memberId] = member
                group.epoch += 1
                self.log.info(
                    "share group {group}: member {member} joined", group=groupId, member=memberId
                )
            member.lastSent = None
            member.epoch = group.epoch
        elif member is None:
            return {**out, "error_code": E.UNKNOWN_MEMBER_ID}
        elif epoch != member.epoch:
            return {**out, "error_code": E.FENCED_MEMBER_EPOCH}
        if b.get("rack_id") is not None:
            member.rackId = b["rack_id"]
        if b.get("subscribed_topic_names") is not None:
            topics = sorted(set(b["subscribed_topic_names"]))
            if topics != member.topics:
                member.topics = topics
                group.epoch += 1
                member.epoch = group.epoch
        self._touch(group, member)
        out["member_id"] = memberId
        out["member_epoch"] = member.epoch
        out["heartbeat_interval_ms"] = int(
            self._config(
                groupId,
                "share.heartbeat.interval.ms",
                "group.share.heartbeat.interval.ms",
                s.share_heartbeat_interval_ms,
            )
        )
        assignment = self._assignment(member)
        if assignment != member.lastSent:
            member.lastSent = assignment
            known = self.node.topics.topics
            out["assignment"] = {
                "topic_partitions": [
                    {"topic_id": known[t].topicId, "partitions": parts}
                    for t, parts in sorted(assignment.items())
                ]
            }
        return out

    def _assignment(self, m: _Member) -> dict[str, list[int]]:
        """Every partition of each subscribed topic (records are shared, not partitions)."""
        topics = self.node.topics.topics
        return {t: list(range(topics[t].partitions)) for t in m.topics if t in topics}

    def _touch(self, group: ShareGroup, m: _Member) -> None:
        s = self.node.settings
        timeout = (
            int(
                self._config(
                    group.groupId,
                    "share.session.timeout.ms",
                    "group.share.session.timeout.ms",
                    s.share_session_timeout_ms,
                )
            )
            / 1000
        )
        if m.timer is not None and m.timer.active():
            m.timer.reset(timeout)
        else:
            m.timer = self.node.reactor.callLater(timeout, self._expired, group, m)

    def _expired(self, group: ShareGroup, m: _Member) -> None:
        m.timer = None
        self._remove(group, m, "session expired")

    def _remove(self, group: ShareGroup, m: _Member, why: str) -> None:
        if group.members.pop(m.memberId, None) is None:
            return
        if m.timer is not None and m.timer.active():
            m.timer.cancel()
        group.epoch += 1
        session = group.sessions.get(m.memberId)
        if why == "left" and session is not None:
            # The share session outlives the membership until it is closed (KIP-932): a
            # consumer that leaves sends its last acknowledgements (ShareAcknowledge with
            # epoch -1) beside its leaving heartbeat, and librdkafka does not wait for one
            # before the other. Unclosed, the session ends when a record lock would.
            session.timer = self.node.reactor.callLater(
                self.lockMs(group.groupId) / 1000, self._orphaned, group, m.memberId, session
            )
        else:
            self.closeSession(group, m.memberId)
        self.log.info(
            "share group {group}: member {member} {why}",
            group=group.groupId,
            member=m.memberId,
            why=why,
        )

    def _orphaned(self, group: ShareGroup, memberId: str, session: _Session) -> None:
        session.timer = None
        if group.sessions.get(memberId) is session and memberId not in group.members:
            self.closeSession(group, memberId)

    def _releaseMember(self, group: ShareGroup, memberId: str) -> None:
        """The member is gone or closed its session: its acquired records go back."""
        limit = self.deliveryLimit(group.groupId)
        for sp in group.partitions.values():
            for r in sp.records.values():
                if r.state == ACQUIRED and r.owner == memberId:
                    sp.release(r, limit)
            sp.advance()
        self._wakeAll(group)

    def _wakeAll(self, group: ShareGroup) -> None:
        for topic, index in list(group.partitions):
            part = self.node.topics.partitions.get(f"kafka/{topic}/{index}")
            if part is not None:
                part.wake()

    # -- share partitions ---------------------------------------------------

    async def _sharePartition(
        self, group: ShareGroup, topic: str, index: int
    ) -> tuple[SharePartition, Partition] | None:
        topics = self.node.topics
        part = await topics.partition(topic, index)
        if part is None:
            return None
        start, end = await topics.store.offsets(part.shard)
        sp = group.partitions.get((topic, index))
        if sp is None:
            reset = self._config(group.groupId, "share.auto.offset.reset", None, "latest")
            sp = SharePartition(topic, index, start if reset == "earliest" else end)
            group.partitions[(topic, index)] = sp
            # written at once, so a restart keeps the offset the group started from
            await self.save(group, sp)
        if sp.start < start:  # records deleted below the SPSO
            for o in [o for o in sp.records if o < start]:
                del sp.records[o]
            sp.start = start
            sp.next = max(sp.next, start)
        return sp, part

    def _expire(self, group: ShareGroup, sp: SharePartition, now: float) -> bool:
        """Acquisition locks that ran out: the records go back (or are archived)."""
        limit = self.deliveryLimit(group.groupId)
        released = False
        for r in sp.records.values():
            if r.state == ACQUIRED and r.deadline <= now:
                sp.release(r, limit)
                released = True
        if released:
            sp.advance()
        return released

    def _lockTimer(self, group: ShareGroup, sp: SharePartition, seconds: float) -> None:
        def fire() -> None:
            if self._expire(group, sp, self.node.reactor.seconds()):
                self._wakeAll(group)

        self.node.reactor.callLater(seconds + 0.001, fire)

    async def acquire(
        self,
        group: ShareGroup,
        memberId: str,
        sp: SharePartition,
        part: Partition,
        maxRecords: int,
        maxBytes: int,
    ) -> tuple[list[bytes], list[dict[str, Any]]]:
        """Acquire records for C{memberId}: C{(batches, acquired ranges)} (KIP-932)."""
        topics = self.node.topics
        s = self.node.settings
        now = self.node.reactor.seconds()
        self._expire(group, sp, now)
        lockMs = self.lockMs(group.groupId)
        committed = (
            self._config(group.groupId, "share.isolation.level", None, "read_uncommitted")
            == "read_committed"
        )
        _, end = await topics.store.offsets(part.shard)
        upTo = part.lastStable() if committed else end
        room = maxRecords
        window = s.share_partition_max_record_locks
        batches: list[bytes] = []
        taken: list[tuple[int, int]] = []  # (offset, delivery count)
        seen: set[int] = set()
        used = 0

        def take(o: int) -> None:
            r = sp.records.setdefault(o, _Record())
            r.state = ACQUIRED
            r.count += 1
            r.owner = memberId
            r.deadline = now + lockMs / 1000
            taken.append((o, r.count))

        # 1. records released earlier (redeliveries), oldest first
        for o in sp.available():
            if len(taken) >= room or used >= maxBytes:
                break
            if o in seen:
                continue
            got = await topics._batchAt(part, o)
            if got is None:
                continue
            base, span, batch = got
            before = len(taken)
            for x in range(base, base + span):
                seen.add(x)
                r = sp.records.get(x)
                if r is not None and r.state == AVAILABLE and len(taken) < room:
                    take(x)
            if len(taken) > before:
                batches.append(batch)
                used += len(batch)
        # 2. records never delivered, from the end of the window, while the window
        #    (SPSO to its end) holds fewer than share_partition_max_record_locks
        while (
            len(taken) < room and used < maxBytes and sp.next < upTo and sp.next - sp.start < window
        ):
            got = await topics._batchAt(part, sp.next)
            if got is None:
                break
            base, span, batch = got
            h = BatchHeader(batch, 0)
            first = max(base, sp.next)
            lastOff = min(base + span, upTo)
            if h.control or (committed and self._aborted(part, h, base)):
                for x in range(first, lastOff):
                    sp.records.setdefault(x, _Record()).state = ARCHIVED
            else:
                for x in range(first, lastOff):
                    take(x)
                batches.append(batch)
                used += len(batch)
            sp.next = lastOff
        sp.advance()
        if taken:
            self._lockTimer(group, sp, lockMs / 1000)
        # the delivery counts are written before the records go out (KIP-932)
        await self.save(group, sp)
        ranges: list[dict[str, Any]] = []
        for o, count in sorted(taken):
            last = ranges[-1] if ranges else None
            if (
                last is not None
                and last["last_offset"] == o - 1
                and last["delivery_count"] == count
            ):
                last["last_offset"] = o
            else:
                ranges.append({"first_offset": o, "last_offset": o, "delivery_count": count})
        return batches, ranges

    def _aborted(self, part: Partition, h: BatchHeader, base: int) -> bool:
        if not h.transactional:
            return False
        return any(
            pid == h.producerId and first <= base <= last for pid, first, last in part.aborted
        )

    def acknowledge(
        self, group: ShareGroup, memberId: str, sp: SharePartition, batches: list[dict[str, Any]]
    ) -> int:
        """Apply acknowledgement batches of one partition; an error code (KIP-932)."""
        limit = self.deliveryLimit(group.groupId)
        code = E.NONE
        for ab in batches:
            first, last, types = ab["first_offset"], ab["last_offset"], ab["acknowledge_types"]
            if last < first or not types or (len(types) != 1 and len(types) != last - first + 1):
                code = E.INVALID_REQUEST
                continue
            for o in range(first, last + 1):
                kind = types[0] if len(types) == 1 else types[o - first]
                r = sp.records.get(o)
                if kind == GAP:
                    if r is not None and r.owner == memberId:
                        r.state = ARCHIVED
                    continue
                if r is None or r.state != ACQUIRED or r.owner != memberId:
                    code = E.INVALID_RECORD_STATE
                    continue
                if kind == ACCEPT:
                    r.state = ACKNOWLEDGED
                elif kind == RELEASE:
                    sp.release(r, limit)
                elif kind == REJECT:
                    r.state = ARCHIVED
                else:
                    code = E.INVALID_REQUEST
        sp.advance()
        return code

    # -- sessions -------------------------------------------------------------

    def session(
        self, group: ShareGroup, memberId: str, epoch: int, fetch: bool
    ) -> tuple[int, _Session | None]:
        """The member's share session for a request with C{epoch} (0 opens, -1 closes)."""
        if epoch == 0:
            if not fetch:
                return E.INVALID_SHARE_SESSION_EPOCH, None
            if memberId in group.sessions:
                self.closeSession(group, memberId)
            fresh = group.sessions[memberId] = _Session()
            return E.NONE, fresh
        session = group.sessions.get(memberId)
        if session is None:
            return E.SHARE_SESSION_NOT_FOUND, None
        if epoch == -1:
            return E.NONE, session
        if epoch != session.epoch:
            return E.INVALID_SHARE_SESSION_EPOCH, None
        session.epoch = 1 if session.epoch >= 0x7FFFFFFF else session.epoch + 1
        return E.NONE, session

    def closeSession(self, group: ShareGroup, memberId: str) -> None:
        """End the member's share session: what it still holds is released."""
        session = group.sessions.pop(memberId, None)
        if session is not None:
            if session.timer is not None and session.timer.active():
                session.timer.cancel()
            self._releaseMember(group, memberId)

    # -- admin (ShareGroupDescribe and the share-group offset APIs) -----------

    def otherKind(self, groupId: str) -> bool:
        """Is C{groupId} a classic or KIP-848 consumer group (so not a share group)?"""
        if groupId in self.groups:
            return False
        node = self.node
        return (
            groupId in node.groups.groups
            or groupId in node.consumerGroups.groups
            or groupId in node.knownGroups
        )

    async def create(self, groupId: str) -> ShareGroup | None:
        """The share group C{groupId}, created empty if need be (AlterShareGroupOffsets);
        None when C{max_groups} groups exist already."""
        group = self.groups.get(groupId)
        if group is None:
            if len(self.groups) >= self.node.settings.max_groups:
                return None
            group = self.groups[groupId] = ShareGroup(groupId)
            await _wait(self.state.saveGroup(groupId))
            self.log.info("share group {group} created by an offset change", group=groupId)
        return group

    async def setStart(self, group: ShareGroup, topic: str, index: int, offset: int) -> bool:
        """Start the share partition over at C{offset} (an empty group only): its in-flight
        state is dropped.  False if the state could not be written."""
        sp = SharePartition(topic, index, offset)
        group.partitions[(topic, index)] = sp
        return await self.save(group, sp)

    async def forgetTopic(self, group: ShareGroup, topic: str) -> bool:
        """Drop the group's state of C{topic} (DeleteShareGroupOffsets); False if it had none."""
        keys = [k for k in group.partitions if k[0] == topic]
        for key in keys:
            await _wait(self._forgetPartition(group, key))
        return bool(keys)

    async def delete(self, groupId: str) -> int | None:
        """DeleteGroups: an error code, or None if C{groupId} is no share group."""
        group = self.groups.get(groupId)
        if group is None:
            return None
        if group.members:
            return E.NON_EMPTY_GROUP
        del self.groups[groupId]
        for memberId in list(group.sessions):  # sessions of members that left
            self.closeSession(group, memberId)
        for key in list(group.partitions):
            await _wait(self._forgetPartition(group, key))
        await _wait(self.state.forgetGroup(groupId))
        self.log.info("share group {group} deleted", group=groupId)
        return E.NONE

    def stop(self) -> None:
        for group in self.groups.values():
            for m in group.members.values():
                if m.timer is not None and m.timer.active():
                    m.timer.cancel()
            for session in group.sessions.values():
                if session.timer is not None and session.timer.active():
                    session.timer.cancel()


class ShareGroupHandlers(ShareAdminHandlers):
    """ShareGroupHeartbeat (76), ShareFetch (78) and ShareAcknowledge (79), and through
    L{ShareAdminHandlers} the share-group admin APIs (a protocol mixin)."""

    node: KafkaNode
    peerHost: str
    _queue: Any

    async def handle_share_group_heartbeat(self, req: Request) -> dict[str, Any]:
        return self.node.shareGroups.heartbeat(req.body, req.clientId or "", self.peerHost)

    def _shareContext(self, b: dict[str, Any]) -> tuple[int, ShareGroup | None]:
        coord = self.node.shareGroups
        group = coord.groups.get(b["group_id"] or "")
        if group is None:
            return E.UNKNOWN_MEMBER_ID, None
        memberId = b["member_id"]
        if memberId in group.members:
            return E.NONE, group
        if memberId in group.sessions and b["share_session_epoch"] == -1:
            return E.NONE, group  # the last request of a member that left: closes its session
        return E.UNKNOWN_MEMBER_ID, None

    async def _acknowledgeAll(
        self, group: ShareGroup, memberId: str, topics: list[dict[str, Any]]
    ) -> dict[tuple[Any, int], int]:
        coord = self.node.shareGroups
        byId = self.node.topics.byId
        codes: dict[tuple[Any, int], int] = {}
        for t in topics:
            name = byId.get(t["topic_id"])
            for p in t["partitions"]:
                acks = p.get("acknowledgement_batches") or []
                if not acks:
                    continue
                key = (t["topic_id"], p["partition_index"])
                if name is None:
                    codes[key] = E.UNKNOWN_TOPIC_ID
                    continue
                got = await coord._sharePartition(group, name, p["partition_index"])
                if got is None:
                    codes[key] = E.UNKNOWN_TOPIC_OR_PARTITION
                    continue
                codes[key] = coord.acknowledge(group, memberId, got[0], acks)
                # acknowledged means written: a restart must not deliver them again
                if not await coord.save(group, got[0]) and codes[key] == E.NONE:
                    codes[key] = E.KAFKA_STORAGE_ERROR
        if codes:
            coord._wakeAll(group)
        return codes

    async def handle_share_fetch(self, req: Request) -> dict[str, Any]:
        b = req.body
        coord = self.node.shareGroups
        topics = self.node.topics
        reactor = self.node.reactor
        base: dict[str, Any] = {"throttle_time_ms": 0, "error_code": E.NONE, "responses": []}
        code, group = self._shareContext(b)
        if group is None:
            return {**base, "error_code": code}
        memberId = b["member_id"]
        epoch = b["share_session_epoch"]
        code, session = coord.session(group, memberId, epoch, fetch=True)
        if session is None:
            return {**base, "error_code": code}
        base["acquisition_lock_timeout_ms"] = coord.lockMs(group.groupId)
        ackCodes = await self._acknowledgeAll(group, memberId, b["topics"])
        for t in b["topics"]:
            name = topics.byId.get(t["topic_id"])
            if name is not None:
                for p in t["partitions"]:
                    session.partitions[(name, p["partition_index"])] = None
        for t in b.get("forgotten_topics_data") or []:
            forgotten = topics.byId.get(t["topic_id"])
            if forgotten is not None:
                for idx in t["partitions"]:
                    session.partitions.pop((forgotten, idx), None)
        answers: dict[tuple[Any, int], dict[str, Any]] = {}
        for key, ack in ackCodes.items():
            answers[key] = _sharePart(key[1], ack=ack)
        if epoch == -1:
            coord.closeSession(group, memberId)
            return {**base, "responses": _byTopic(answers)}
        maxRecords = b.get("max_records") or 500
        maxBytes = b.get("max_bytes") or 0x7FFFFFFF
        deadline = (
            reactor.seconds() + min(max(b["max_wait_ms"], 0), self.node.settings.max_wait_ms) / 1000
        )
        for _attempt in range(1000):
            total = 0
            parts = []
            for name, idx in list(session.partitions):
                t = topics.topics.get(name)
                got = await coord._sharePartition(group, name, idx) if t is not None else None
                key = (t.topicId if t is not None else None, idx)
                if got is None:
                    answers[key] = _sharePart(idx, error=E.UNKNOWN_TOPIC_OR_PARTITION)
                    continue
                sp, part = got
                parts.append(part)
                if total >= maxRecords:
                    continue
                batches, ranges = await coord.acquire(
                    group, memberId, sp, part, maxRecords - total, maxBytes
                )
                if ranges:
                    r = answers.setdefault(key, _sharePart(idx))
                    r["records"] = Spliced(batches)
                    r["acquired_records"] = ranges
                    total += sum(x["last_offset"] - x["first_offset"] + 1 for x in ranges)
            remaining = deadline - reactor.seconds()
            if total or remaining <= 0 or not parts or self._queue:
                break
            answers = {
                k: v for k, v in answers.items() if v["acknowledge_error_code"] or v["error_code"]
            }
            wake: defer.Deferred[None] = defer.Deferred()
            for p in parts:
                p.waiters.append(wake)
            timer = reactor.callLater(remaining, _fire, wake)
            await wake
            if timer.active():
                timer.cancel()
            for p in parts:
                if wake in p.waiters:
                    p.waiters.remove(wake)
        bid = self.node.settings.broker_id
        for r in answers.values():
            r["current_leader"] = {"leader_id": bid, "leader_epoch": 0}
        return {**base, "responses": _byTopic(answers)}

    async def handle_share_acknowledge(self, req: Request) -> dict[str, Any]:
        b = req.body
        coord = self.node.shareGroups
        base: dict[str, Any] = {"throttle_time_ms": 0, "error_code": E.NONE, "responses": []}
        code, group = self._shareContext(b)
        if group is None:
            return {**base, "error_code": code}
        memberId = b["member_id"]
        epoch = b["share_session_epoch"]
        code, session = coord.session(group, memberId, epoch, fetch=False)
        if session is None:
            return {**base, "error_code": code}
        codes = await self._acknowledgeAll(group, memberId, b["topics"])
        if epoch == -1:
            coord.closeSession(group, memberId)
        out: dict[Any, list[dict[str, Any]]] = {}
        for (tid, idx), c in codes.items():
            out.setdefault(tid, []).append(
                {
                    "partition_index": idx,
                    "error_code": c,
                    "error_message": None,
                    "current_leader": {
                        "leader_id": self.node.settings.broker_id,
                        "leader_epoch": 0,
                    },
                }
            )
        return {**base, "responses": [{"topic_id": t, "partitions": ps} for t, ps in out.items()]}


def _sharePart(index: int, error: int = E.NONE, ack: int = E.NONE) -> dict[str, Any]:
    return {
        "partition_index": index,
        "error_code": error,
        "acknowledge_error_code": ack,
        "current_leader": {"leader_id": -1, "leader_epoch": -1},  # filled by the handler
        "records": None,
        "acquired_records": [],
    }


def _byTopic(answers: dict[tuple[Any, int], dict[str, Any]]) -> list[dict[str, Any]]:
    out: dict[Any, list[dict[str, Any]]] = {}
    for (tid, _), r in answers.items():
        out.setdefault(tid, []).append(r)
    return [{"topic_id": t, "partitions": ps} for t, ps in out.items() if t is not None]


async def _wait(d: defer.Deferred[Any] | None) -> None:
    if d is not None:
        await d


def _fire(d: defer.Deferred[None]) -> None:
    if not d.called:
        d.callback(None)
