"""
The consumer group coordinator: Kafka's classic (eager) rebalance protocol.

States follow Kafka's: C{Empty} -> C{PreparingRebalance} (joins are held
until every known member has rejoined or the rebalance timeout passes) ->
C{CompletingRebalance} (the leader computes assignments and sends them in
SyncGroup) -> C{Stable}.  Each member has a session timer reset by every
request it makes; when it fires the member is removed and the group
rebalances.  Committed offsets live in the shard store (L{IShardStore.commitOffset})
and group names in a compacted shard, so both survive a restart; group
membership does not (clients rejoin, as after a coordinator failover).
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger

from robustmq.protocols.kafka import _errors as E

if TYPE_CHECKING:
    from robustmq.config import KafkaSettings

__all__ = ["Group", "GroupCoordinator", "Member"]

EMPTY = "Empty"
PREPARING = "PreparingRebalance"
COMPLETING = "CompletingRebalance"
STABLE = "Stable"
DEAD = "Dead"


class Member:
    """One member of a group."""

    __slots__ = (
        "memberId",
        "instanceId",
        "clientId",
        "clientHost",
        "sessionTimeout",
        "rebalanceTimeout",
        "protocolType",
        "protocols",
        "assignment",
        "joinWaiter",
        "syncWaiter",
        "timer",
    )

    def __init__(self, memberId: str, instanceId: str | None, clientId: str, clientHost: str):
        self.memberId = memberId
        self.instanceId = instanceId
        self.clientId = clientId
        self.clientHost = clientHost
        self.sessionTimeout = 10_000
        self.rebalanceTimeout = 60_000
        self.protocolType = ""
        self.protocols: list[tuple[str, bytes]] = []
        self.assignment = b""
        self.joinWaiter: defer.Deferred[dict[str, Any]] | None = None
        self.syncWaiter: defer.Deferred[dict[str, Any]] | None = None
        self.timer: Any = None

    def metadataFor(self, protocol: str) -> bytes:
        for name, meta in self.protocols:
            if name == protocol:
                return meta
        return b""


class Group:
    """A group's members, generation and state."""

    def __init__(self, groupId: str) -> None:
        self.groupId = groupId
        self.state = EMPTY
        self.generation = 0
        self.protocolType: str | None = None
        self.protocol: str | None = None
        self.leader: str | None = None
        self.members: dict[str, Member] = {}
        self.rebalanceTimer: Any = None
        #: the first rebalance out of Empty waits group_initial_rebalance_delay_ms
        self.initialDelay = False
        #: member ids handed out with MEMBER_ID_REQUIRED (KIP-394), not joined yet -> expiry
        self.pendingMembers: dict[str, Any] = {}

    def supportsProtocols(self, protocolType: str, names: list[str]) -> bool:
        if not self.members:
            return True
        if protocolType != self.protocolType:
            return False
        common = None
        for m in self.members.values():
            mine = {n for n, _ in m.protocols}
            common = mine if common is None else common & mine
        return bool(common & set(names)) if common is not None else True

    def selectProtocol(self) -> str:
        """The protocol every member supports with the most first-choice votes."""
        candidates: set[str] | None = None
        for m in self.members.values():
            mine = {n for n, _ in m.protocols}
            candidates = mine if candidates is None else candidates & mine
        assert candidates
        votes: dict[str, int] = {}
        for m in self.members.values():
            for n, _ in m.protocols:
                if n in candidates:
                    votes[n] = votes.get(n, 0) + 1
                    break
        return max(sorted(candidates), key=lambda n: votes.get(n, 0))


class GroupCoordinator:
    """Every group this node coordinates (a single node coordinates all of them)."""

    log = Logger()

    def __init__(self, settings: KafkaSettings, reactor: Any) -> None:
        self.settings = settings
        self.reactor = reactor
        self.groups: dict[str, Group] = {}

    # -- joining ---------------------------------------------------------

    def join(
        self,
        groupId: str,
        memberId: str,
        instanceId: str | None,
        clientId: str,
        clientHost: str,
        sessionTimeout: int,
        rebalanceTimeout: int,
        protocolType: str,
        protocols: list[tuple[str, bytes]],
        requireKnownMemberId: bool = False,
    ) -> defer.Deferred[dict[str, Any]]:
        """Handle a JoinGroup; fires with the response body once the rebalance completes.

        With C{requireKnownMemberId} (JoinGroup v4+, KIP-394) a new member
        without a group instance id first gets MEMBER_ID_REQUIRED with the id
        it must rejoin with; the id is forgotten if it does not rejoin within
        its session timeout.
        """
        s = self.settings
        if not groupId:
            return defer.succeed({"error_code": E.INVALID_GROUP_ID, "member_id": memberId})
        if not s.group_min_session_timeout_ms <= sessionTimeout <= s.group_max_session_timeout_ms:
            return defer.succeed({"error_code": E.INVALID_SESSION_TIMEOUT, "member_id": memberId})
        group = self.groups.get(groupId)
        if group is None:
            if len(self.groups) >= s.max_groups:
                return defer.succeed(
                    {"error_code": E.COORDINATOR_NOT_AVAILABLE, "member_id": memberId}
                )
            group = self.groups[groupId] = Group(groupId)
        if not protocols or not group.supportsProtocols(protocolType, [n for n, _ in protocols]):
            return defer.succeed(
                {"error_code": E.INCONSISTENT_GROUP_PROTOCOL, "member_id": memberId}
            )
        member: Member | None = None
        if not memberId and instanceId is None and requireKnownMemberId:
            if len(group.members) + len(group.pendingMembers) >= s.max_group_members:
                return defer.succeed({"error_code": E.GROUP_MAX_SIZE_REACHED, "member_id": ""})
            newId = f"{clientId or 'member'}-{uuid.uuid4()}"
            group.pendingMembers[newId] = self.reactor.callLater(
                sessionTimeout / 1000, group.pendingMembers.pop, newId, None
            )
            return defer.succeed({"error_code": E.MEMBER_ID_REQUIRED, "member_id": newId})
        if memberId:
            member = group.members.get(memberId)
            pending = group.pendingMembers.pop(memberId, None)
            if pending is not None and pending.active():
                pending.cancel()
            if member is None and pending is None:
                return defer.succeed({"error_code": E.UNKNOWN_MEMBER_ID, "member_id": memberId})
        elif instanceId is not None:
            # Static membership (KIP-345): a known instance id takes over its old member.
            for old in list(group.members.values()):
                if old.instanceId == instanceId:
                    self._removeMember(group, old, rebalance=False)
                    if group.leader == old.memberId:
                        group.leader = None
        if member is None:
            if len(group.members) >= s.max_group_members:
                return defer.succeed({"error_code": E.GROUP_MAX_SIZE_REACHED, "member_id": ""})
            newId = memberId or f"{clientId or 'member'}-{uuid.uuid4()}"
            member = Member(newId, instanceId, clientId, clientHost)
            group.members[newId] = member
            if group.leader is None:
                group.leader = newId
            group.protocolType = protocolType
        member.sessionTimeout = sessionTimeout
        member.rebalanceTimeout = rebalanceTimeout if rebalanceTimeout > 0 else sessionTimeout
        member.protocolType = protocolType
        member.protocols = protocols
        if member.joinWaiter is not None and not member.joinWaiter.called:
            member.joinWaiter.callback({"error_code": E.REBALANCE_IN_PROGRESS})
        d: defer.Deferred[dict[str, Any]] = defer.Deferred()
        member.joinWaiter = d
        self._touch(group, member)
        if group.state != PREPARING:
            self._prepareRebalance(group, initial=group.state == EMPTY)
        else:
            self._maybeCompleteJoin(group)
        return d

    def _prepareRebalance(self, group: Group, initial: bool = False) -> None:
        for m in group.members.values():
            if m.syncWaiter is not None and not m.syncWaiter.called:
                m.syncWaiter.callback({"error_code": E.REBALANCE_IN_PROGRESS})
            m.syncWaiter = None
        group.state = PREPARING
        if group.rebalanceTimer is not None and group.rebalanceTimer.active():
            group.rebalanceTimer.cancel()
        timeout = max((m.rebalanceTimeout for m in group.members.values()), default=0) / 1000
        if initial:
            # Kafka's group.initial.rebalance.delay.ms: let more members arrive.
            timeout = self.settings.group_initial_rebalance_delay_ms / 1000
        group.initialDelay = initial
        group.rebalanceTimer = self.reactor.callLater(timeout, self._rebalanceTimeout, group)
        if not initial:
            self._maybeCompleteJoin(group)

    def _rebalanceTimeout(self, group: Group) -> None:
        group.rebalanceTimer = None
        group.initialDelay = False
        if group.state != PREPARING:
            return
        for m in list(group.members.values()):
            if m.joinWaiter is None:
                self.log.info(
                    "group {group}: member {member} did not rejoin in time",
                    group=group.groupId,
                    member=m.memberId,
                )
                self._removeMember(group, m, rebalance=False)
        self._completeJoin(group)

    def _maybeCompleteJoin(self, group: Group) -> None:
        if group.state != PREPARING or group.initialDelay:
            return
        if all(m.joinWaiter is not None for m in group.members.values()):
            if group.rebalanceTimer is not None and group.rebalanceTimer.active():
                group.rebalanceTimer.cancel()
            group.rebalanceTimer = None
            self._completeJoin(group)

    def _completeJoin(self, group: Group) -> None:
        if not group.members:
            group.state = EMPTY
            group.generation += 1
            group.leader = None
            group.protocol = None
            return
        group.generation += 1
        group.protocol = group.selectProtocol()
        if group.leader not in group.members:
            group.leader = next(iter(group.members))
        group.state = COMPLETING
        self.log.info(
            "group {group} generation {gen}: {n} members, protocol {protocol}",
            group=group.groupId,
            gen=group.generation,
            n=len(group.members),
            protocol=group.protocol,
        )
        for m in group.members.values():
            m.assignment = b""
            waiter, m.joinWaiter = m.joinWaiter, None
            body: dict[str, Any] = {
                "error_code": E.NONE,
                "generation_id": group.generation,
                "protocol_type": group.protocolType,
                "protocol_name": group.protocol,
                "leader": group.leader,
                "member_id": m.memberId,
                "members": [],
            }
            if m.memberId == group.leader:
                body["members"] = [
                    {
                        "member_id": o.memberId,
                        "group_instance_id": o.instanceId,
                        "metadata": o.metadataFor(group.protocol),
                    }
                    for o in group.members.values()
                ]
            self._touch(group, m)
            if waiter is not None and not waiter.called:
                waiter.callback(body)

    # -- syncing ---------------------------------------------------------

    def sync(
        self, groupId: str, generation: int, memberId: str, assignments: list[tuple[str, bytes]]
    ) -> defer.Deferred[dict[str, Any]]:
        """Handle a SyncGroup; followers wait for the leader's assignments."""
        group = self.groups.get(groupId)
        if group is None or memberId not in group.members:
            return defer.succeed({"error_code": E.UNKNOWN_MEMBER_ID})
        if generation != group.generation:
            return defer.succeed({"error_code": E.ILLEGAL_GENERATION})
        member = group.members[memberId]
        self._touch(group, member)
        if group.state == PREPARING:
            return defer.succeed({"error_code": E.REBALANCE_IN_PROGRESS})
        if group.state == STABLE:
            return defer.succeed(self._syncBody(group, member))
        d: defer.Deferred[dict[str, Any]] = defer.Deferred()
        member.syncWaiter = d
        if memberId == group.leader:
            given = dict(assignments)
            for m in group.members.values():
                m.assignment = given.get(m.memberId, b"")
            group.state = STABLE
            for m in group.members.values():
                waiter, m.syncWaiter = m.syncWaiter, None
                if waiter is not None and not waiter.called:
                    waiter.callback(self._syncBody(group, m))
        return d

    def _syncBody(self, group: Group, m: Member) -> dict[str, Any]:
        return {
            "error_code": E.NONE,
            "protocol_type": group.protocolType,
            "protocol_name": group.protocol,
            "assignment": m.assignment,
        }

    # -- liveness --------------------------------------------------------

    def heartbeat(self, groupId: str, generation: int, memberId: str) -> int:
        """Handle a Heartbeat; returns the error code."""
        group = self.groups.get(groupId)
        if group is None or memberId not in group.members:
            return E.UNKNOWN_MEMBER_ID
        member = group.members[memberId]
        self._touch(group, member)
        if group.state == PREPARING:
            return E.REBALANCE_IN_PROGRESS
        if generation != group.generation:
            return E.ILLEGAL_GENERATION
        return E.NONE

    def leave(self, groupId: str, members: list[tuple[str, str | None]]) -> list[int]:
        """Handle a LeaveGroup; one error code per C{(memberId, instanceId)}."""
        group = self.groups.get(groupId)
        out = []
        for memberId, instanceId in members:
            if group is None:
                out.append(E.UNKNOWN_MEMBER_ID)
                continue
            m = group.members.get(memberId)
            if m is None and instanceId is not None:
                m = next((x for x in group.members.values() if x.instanceId == instanceId), None)
            if m is None:
                out.append(E.UNKNOWN_MEMBER_ID)
                continue
            self.log.info("group {group}: member {member} left", group=groupId, member=m.memberId)
            self._removeMember(group, m)
            out.append(E.NONE)
        return out

    def _touch(self, group: Group, member: Member) -> None:
        timeout = member.sessionTimeout / 1000
        if member.timer is not None and member.timer.active():
            member.timer.reset(timeout)
        else:
            member.timer = self.reactor.callLater(timeout, self._expire, group, member)

    def _expire(self, group: Group, member: Member) -> None:
        member.timer = None
        if member.joinWaiter is not None and group.state == PREPARING:
            # waiting in a join: the rebalance timeout governs it
            self._touch(group, member)
            return
        self.log.info(
            "group {group}: member {member} session expired",
            group=group.groupId,
            member=member.memberId,
        )
        self._removeMember(group, member)

    def _removeMember(self, group: Group, member: Member, rebalance: bool = True) -> None:
        group.members.pop(member.memberId, None)
        if member.timer is not None and member.timer.active():
            member.timer.cancel()
        member.timer = None
        for w in (member.joinWaiter, member.syncWaiter):
            if w is not None and not w.called:
                w.callback({"error_code": E.UNKNOWN_MEMBER_ID, "member_id": member.memberId})
        member.joinWaiter = member.syncWaiter = None
        if group.leader == member.memberId:
            group.leader = next(iter(group.members), None)
        if not rebalance:
            return
        if not group.members:
            if group.rebalanceTimer is not None and group.rebalanceTimer.active():
                group.rebalanceTimer.cancel()
            group.rebalanceTimer = None
            group.state = EMPTY
            group.generation += 1
            group.protocol = None
            return
        if group.state in (STABLE, COMPLETING):
            self._prepareRebalance(group)
        elif group.state == PREPARING:
            self._maybeCompleteJoin(group)

    # -- offsets ---------------------------------------------------------

    def checkCommit(self, groupId: str, generation: int, memberId: str) -> int:
        """May this member commit offsets now? (generation -1: a simple, group-less commit)."""
        group = self.groups.get(groupId)
        if generation < 0 and not memberId:
            if group is not None and group.members:
                return E.UNKNOWN_MEMBER_ID if group.state != EMPTY else E.NONE
            return E.NONE
        if group is None or memberId not in group.members:
            return E.UNKNOWN_MEMBER_ID
        self._touch(group, group.members[memberId])
        if group.state == PREPARING:
            return E.REBALANCE_IN_PROGRESS
        if generation != group.generation:
            return E.ILLEGAL_GENERATION
        return E.NONE

    def describe(self, groupId: str) -> dict[str, Any]:
        """The DescribeGroups entry of one group."""
        group = self.groups.get(groupId)
        if group is None:
            return {"error_code": E.NONE, "group_id": groupId, "group_state": DEAD, "members": []}
        return {
            "error_code": E.NONE,
            "group_id": groupId,
            "group_state": group.state,
            "protocol_type": group.protocolType or "",
            "protocol_data": group.protocol or "",
            "members": [
                {
                    "member_id": m.memberId,
                    "group_instance_id": m.instanceId,
                    "client_id": m.clientId,
                    "client_host": m.clientHost,
                    "member_metadata": m.metadataFor(group.protocol or ""),
                    "member_assignment": m.assignment,
                }
                for m in group.members.values()
            ],
        }

    def delete(self, groupId: str) -> int:
        """Forget an empty group; NON_EMPTY_GROUP while it has members."""
        group = self.groups.get(groupId)
        if group is not None and group.members:
            return E.NON_EMPTY_GROUP
        self.groups.pop(groupId, None)
        return E.NONE

    def stop(self) -> None:
        """Cancel every timer (node shutdown, tests)."""
        for group in self.groups.values():
            if group.rebalanceTimer is not None and group.rebalanceTimer.active():
                group.rebalanceTimer.cancel()
            for timer in group.pendingMembers.values():
                if timer.active():
                    timer.cancel()
            group.pendingMembers.clear()
            for m in group.members.values():
                if m.timer is not None and m.timer.active():
                    m.timer.cancel()
