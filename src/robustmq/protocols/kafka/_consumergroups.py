"""
The new consumer group protocol (KIP-848): ConsumerGroupHeartbeat and ConsumerGroupDescribe.

Members join, heartbeat and leave with one RPC; the broker assigns the
partitions (server-side assignor) and hands each member its share over
later heartbeats.  A partition moves between members in two steps, as
KIP-848 requires: the old owner is first told its smaller assignment and
must report (in C{TopicPartitions}) that it let the partition go; only then
is it given to the new owner.  A member's epoch catches up with the group
epoch once it owns exactly its target assignment.

State is in memory, like the classic groups': after a restart members
rejoin (their committed offsets are in the store).  Group ids are shared
with classic groups: an id in use by a classic group with members refuses
the other protocol (GROUP_ID_NOT_FOUND for a heartbeat, as Kafka answers
when it cannot convert the group).
"""

from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from robustmq.protocols.kafka import _errors as E

if TYPE_CHECKING:
    from robustmq.protocols.kafka._codec import Request
    from robustmq.protocols.kafka._node import KafkaNode

__all__ = ["ConsumerGroup", "ConsumerGroupCoordinator", "ConsumerGroupHandlers"]

ASSIGNORS = ("uniform", "range")

Assignment = dict[str, set[int]]  # topic name -> partitions


class _Member:
    __slots__ = (
        "memberId",
        "epoch",
        "previousEpoch",
        "instanceId",
        "rackId",
        "clientId",
        "clientHost",
        "topics",
        "regex",
        "assignor",
        "rebalanceTimeoutMs",
        "assigned",
        "owned",
        "lastSent",
        "timer",
    )

    def __init__(self, memberId: str, clientId: str, clientHost: str) -> None:
        self.memberId = memberId
        self.epoch = 0
        self.previousEpoch = -1
        self.instanceId: str | None = None
        self.rackId: str | None = None
        self.clientId = clientId
        self.clientHost = clientHost
        self.topics: list[str] = []
        self.regex: str | None = None
        self.assignor: str | None = None
        self.rebalanceTimeoutMs = 300_000
        #: partitions this member may use now
        self.assigned: Assignment = {}
        #: partitions the member last said it owns (None: not reported yet)
        self.owned: Assignment | None = None
        #: the assignment last put in a response (None: never)
        self.lastSent: Assignment | None = None
        self.timer: Any = None


class ConsumerGroup:
    """One KIP-848 group: its epoch, members and target assignment."""

    def __init__(self, groupId: str) -> None:
        self.groupId = groupId
        self.epoch = 0
        self.assignmentEpoch = 0
        self.members: dict[str, _Member] = {}
        self.target: dict[str, Assignment] = {}
        self.assignor = "uniform"

    @property
    def state(self) -> str:
        if not self.members:
            return "Empty"
        if self.assignmentEpoch < self.epoch:
            return "Assigning"
        if any(m.epoch != self.epoch for m in self.members.values()):
            return "Reconciling"
        return "Stable"


def _copy(a: Assignment) -> Assignment:
    return {t: set(p) for t, p in a.items() if p}


class ConsumerGroupCoordinator:
    """Every KIP-848 group of this node."""

    log = Logger()

    def __init__(self, node: KafkaNode) -> None:
        self.node = node
        self.groups: dict[str, ConsumerGroup] = {}

    # -- settings (group configs override the node's) ---------------------

    def _config(self, groupId: str, key: str, default: int) -> int:
        own = self.node.configs.groups.get(groupId, {})
        broker = self.node.configs.broker
        value = own.get(key, broker.get("group." + key))
        return int(value) if value is not None else default

    def sessionTimeoutMs(self, groupId: str) -> int:
        s = self.node.settings
        return self._config(groupId, "consumer.session.timeout.ms", s.consumer_session_timeout_ms)

    def heartbeatIntervalMs(self, groupId: str) -> int:
        s = self.node.settings
        return self._config(
            groupId, "consumer.heartbeat.interval.ms", s.consumer_heartbeat_interval_ms
        )

    # -- membership -------------------------------------------------------

    def heartbeat(
        self, b: dict[str, Any], version: int, clientId: str, host: str
    ) -> dict[str, Any]:
        """Handle one ConsumerGroupHeartbeat request body; returns the response body."""
        groupId = b["group_id"]
        memberId = b["member_id"]
        epoch = b["member_epoch"]
        out: dict[str, Any] = {"throttle_time_ms": 0, "error_code": E.NONE}
        if not groupId:
            return {**out, "error_code": E.INVALID_REQUEST, "error_message": "empty group id"}
        classic = self.node.groups.groups.get(groupId)
        if classic is not None and classic.members:
            return {
                **out,
                "error_code": E.GROUP_ID_NOT_FOUND,
                "error_message": f"group {groupId} uses the classic protocol",
            }
        group = self.groups.get(groupId)
        if epoch in (-1, -2):  # leave (-2: a static member that will come back)
            if group is not None and memberId in group.members:
                self._remove(group, group.members[memberId], "left")
            return {**out, "member_id": memberId, "member_epoch": epoch}
        if group is None:
            if len(self.groups) + len(self.node.groups.groups) >= self.node.settings.max_groups:
                return {**out, "error_code": E.COORDINATOR_NOT_AVAILABLE}
            group = self.groups[groupId] = ConsumerGroup(groupId)
        member = group.members.get(memberId) if memberId else None
        if epoch == 0:
            if b.get("server_assignor") not in (None, *ASSIGNORS):
                return {**out, "error_code": E.UNSUPPORTED_ASSIGNOR}
            if member is None:
                if len(group.members) >= self.node.settings.max_group_members:
                    return {**out, "error_code": E.GROUP_MAX_SIZE_REACHED}
                if not memberId:
                    if version >= 1:
                        return {
                            **out,
                            "error_code": E.INVALID_REQUEST,
                            "error_message": "v1+ members choose their member id (KIP-1082)",
                        }
                    memberId = str(uuid.uuid4())
                member = _Member(memberId, clientId, host)
                group.members[memberId] = member
                self.log.info(
                    "consumer group {group}: member {member} joined", group=groupId, member=memberId
                )
            else:
                member.epoch = 0  # a rejoin: start over
            member.lastSent = None
            changed = True
        else:
            if member is None:
                return {**out, "error_code": E.UNKNOWN_MEMBER_ID}
            if epoch not in (member.epoch, member.previousEpoch):
                return {**out, "error_code": E.FENCED_MEMBER_EPOCH}
            changed = False
        changed = self._update(member, b) or changed
        if changed:
            self._rebalance(group)
        self._touch(group, member)
        self._reconcile(group, member)
        out["member_id"] = member.memberId
        out["member_epoch"] = member.epoch
        out["heartbeat_interval_ms"] = self.heartbeatIntervalMs(groupId)
        if member.lastSent != member.assigned:
            member.lastSent = _copy(member.assigned)
            out["assignment"] = {"topic_partitions": self._byId(member.assigned)}
        return out

    def _update(self, m: _Member, b: dict[str, Any]) -> bool:
        """Apply the request's (changed) fields; True if the subscription changed."""
        changed = False
        if b.get("instance_id") is not None:
            m.instanceId = b["instance_id"]
        if b.get("rack_id") is not None:
            m.rackId = b["rack_id"]
        if b.get("rebalance_timeout_ms", -1) >= 0:
            m.rebalanceTimeoutMs = b["rebalance_timeout_ms"]
        if b.get("subscribed_topic_names") is not None:
            names = sorted(set(b["subscribed_topic_names"]))
            changed = changed or names != m.topics
            m.topics = names
        if b.get("subscribed_topic_regex") is not None:
            regex = b["subscribed_topic_regex"] or None
            changed = changed or regex != m.regex
            m.regex = regex
        if b.get("server_assignor") is not None:
            m.assignor = b["server_assignor"]
        if b.get("topic_partitions") is not None:
            owned: Assignment = {}
            for tp in b["topic_partitions"]:
                name = self.node.topics.byId.get(tp["topic_id"])
                if name is not None:
                    owned[name] = set(tp["partitions"])
            m.owned = owned
        return changed

    def _subscribed(self, m: _Member) -> list[str]:
        topics = self.node.topics.topics
        names = {t for t in m.topics if t in topics}
        if m.regex:
            try:
                pattern = re.compile(m.regex)
            except re.error:
                pattern = None
            if pattern is not None:
                names |= {t for t in topics if pattern.fullmatch(t)}
        return sorted(names)

    def _rebalance(self, group: ConsumerGroup) -> None:
        """A new group epoch and target assignment (membership or subscriptions changed)."""
        group.epoch += 1
        topics = self.node.topics.topics
        target: dict[str, Assignment] = {mid: {} for mid in group.members}
        subscribers: dict[str, list[str]] = {}
        for mid in sorted(group.members):
            for t in self._subscribed(group.members[mid]):
                subscribers.setdefault(t, []).append(mid)
        # round-robin per topic, rotating the starting member so that one
        # member does not get the first partition of every topic
        rotation = 0
        for t in sorted(subscribers):
            mids = subscribers[t]
            for p in range(topics[t].partitions):
                mid = mids[(p + rotation) % len(mids)]
                target[mid].setdefault(t, set()).add(p)
            rotation += topics[t].partitions
        group.target = target
        group.assignmentEpoch = group.epoch

    def _reconcile(self, group: ConsumerGroup, m: _Member) -> None:
        """Move the member toward its target: revoke first, then add what others released."""
        target = group.target.get(m.memberId, {})
        keep: Assignment = {}
        for t, parts in m.assigned.items():
            kept = parts & target.get(t, set())
            if kept:
                keep[t] = kept
        revoking = keep != m.assigned
        m.assigned = keep
        if revoking:
            return  # the member must first report that it let them go
        held: dict[tuple[str, int], str] = {}
        for other in group.members.values():
            if other is m:
                continue
            for t, parts in other.assigned.items():
                for p in parts:
                    held[(t, p)] = other.memberId
            for t, parts in (other.owned or {}).items():
                for p in parts:
                    held.setdefault((t, p), other.memberId)
        for t, parts in target.items():
            for p in parts:
                if (t, p) not in held:
                    m.assigned.setdefault(t, set()).add(p)
        if m.assigned == target and m.epoch != group.epoch:
            m.previousEpoch, m.epoch = m.epoch, group.epoch

    def _byId(self, a: Assignment) -> list[dict[str, Any]]:
        topics = self.node.topics.topics
        return [
            {"topic_id": topics[t].topicId, "partitions": sorted(p)}
            for t, p in sorted(a.items())
            if t in topics and p
        ]

    def _touch(self, group: ConsumerGroup, m: _Member) -> None:
        timeout = self.sessionTimeoutMs(group.groupId) / 1000
        if m.timer is not None and m.timer.active():
            m.timer.reset(timeout)
        else:
            m.timer = self.node.reactor.callLater(timeout, self._expired, group, m)

    def _expired(self, group: ConsumerGroup, m: _Member) -> None:
        m.timer = None
        self._remove(group, m, "session expired")

    def _remove(self, group: ConsumerGroup, m: _Member, why: str) -> None:
        if group.members.pop(m.memberId, None) is None:
            return
        if m.timer is not None and m.timer.active():
            m.timer.cancel()
        self.log.info(
            "consumer group {group}: member {member} {why}",
            group=group.groupId,
            member=m.memberId,
            why=why,
        )
        self._rebalance(group)

    def topicsChanged(self) -> None:
        """Topics were created, grown or deleted: groups subscribed to them rebalance."""
        for group in self.groups.values():
            if group.members:
                self._rebalance(group)

    # -- offsets, listing, describing -------------------------------------

    def checkCommit(self, groupId: str, memberId: str, epoch: int) -> int | None:
        """OffsetCommit v9+ by a KIP-848 member: an error code, or None if not such a group."""
        group = self.groups.get(groupId)
        if group is None or (not group.members and not memberId):
            return None
        if epoch < 0 and not memberId:
            return E.NONE if not group.members else E.UNKNOWN_MEMBER_ID
        m = group.members.get(memberId)
        if m is None:
            return E.UNKNOWN_MEMBER_ID
        if epoch > m.epoch:
            return E.STALE_MEMBER_EPOCH
        return E.NONE

    def describe(self, groupId: str) -> dict[str, Any]:
        """The ConsumerGroupDescribe entry of one group."""
        group = self.groups.get(groupId)
        if group is None:
            return {
                "error_code": E.GROUP_ID_NOT_FOUND,
                "error_message": f"group {groupId} is not a consumer group",
                "group_id": groupId,
                "group_state": "Dead",
                "members": [],
            }
        topics = self.node.topics.topics

        def assignment(a: Assignment) -> dict[str, Any]:
            return {
                "topic_partitions": [
                    {"topic_id": topics[t].topicId, "topic_name": t, "partitions": sorted(p)}
                    for t, p in sorted(a.items())
                    if t in topics
                ]
            }

        return {
            "error_code": E.NONE,
            "error_message": None,
            "group_id": groupId,
            "group_state": group.state,
            "group_epoch": group.epoch,
            "assignment_epoch": group.assignmentEpoch,
            "assignor_name": group.assignor,
            "members": [
                {
                    "member_id": m.memberId,
                    "instance_id": m.instanceId,
                    "rack_id": m.rackId,
                    "member_epoch": m.epoch,
                    "client_id": m.clientId,
                    "client_host": m.clientHost,
                    "subscribed_topic_names": m.topics,
                    "subscribed_topic_regex": m.regex,
                    "assignment": assignment(m.assigned),
                    "target_assignment": assignment(group.target.get(m.memberId, {})),
                }
                for m in group.members.values()
            ],
        }

    def delete(self, groupId: str) -> int | None:
        """DeleteGroups: an error code, or None if no such consumer group."""
        group = self.groups.get(groupId)
        if group is None:
            return None
        if group.members:
            return E.NON_EMPTY_GROUP
        del self.groups[groupId]
        return E.NONE

    def stop(self) -> None:
        """Cancel every timer."""
        for group in self.groups.values():
            for m in group.members.values():
                if m.timer is not None and m.timer.active():
                    m.timer.cancel()


class ConsumerGroupHandlers:
    """ConsumerGroupHeartbeat (68) and ConsumerGroupDescribe (69) handlers (a protocol mixin)."""

    node: KafkaNode
    peerHost: str

    async def handle_consumer_group_heartbeat(self, req: Request) -> dict[str, Any]:
        return self.node.consumerGroups.heartbeat(
            req.body, req.apiVersion, req.clientId or "", self.peerHost
        )

    async def handle_consumer_group_describe(self, req: Request) -> dict[str, Any]:
        groups = self.node.consumerGroups
        return {
            "throttle_time_ms": 0,
            "groups": [groups.describe(g) for g in req.body["group_ids"]],
        }
