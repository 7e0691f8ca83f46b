"""
The share-group admin APIs (KIP-932), as Apache Kafka 4.1 answers them:

- ShareGroupDescribe (77): state, epochs, assignor and members with their
  subscriptions and assignments; DESCRIBE on the group, and DESCRIBE on every
  topic the group uses (else TOPIC_AUTHORIZATION_FAILED for the group);
- DescribeShareGroupOffsets (90): the share-partition start offset (SPSO) of
  each partition, -1 where the group has no state for it; DESCRIBE on the
  group and on each named topic (asked for all topics, the topics the client
  may not describe are left out);
- AlterShareGroupOffsets (91): sets the SPSO of an empty share group (creating
  the group if there is none), dropping its in-flight state; READ on the group
  and on each topic;
- DeleteShareGroupOffsets (92): drops an empty share group's state of whole
  topics (the group starts them again from C{share.auto.offset.reset}); DELETE
  on the group, READ on each topic.

A classic or KIP-848 group is "not a share group" (GROUP_ID_NOT_FOUND); a
share group with members is NON_EMPTY_GROUP for the offset changes.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from robustmq.core.security import kafkaacl as K
from robustmq.interfaces import StorageError
from robustmq.protocols.kafka import _errors as E

if TYPE_CHECKING:
    from robustmq.protocols.kafka._codec import Request
    from robustmq.protocols.kafka._node import KafkaNode
    from robustmq.protocols.kafka._sharegroups import ShareGroup

__all__ = ["ShareAdminHandlers"]

_NO_TOPIC = uuid.UUID(int=0)
_UNKNOWN_OPS = -2147483648
#: the operations Kafka reports for a group (AuthorizedOperations bits)
_GROUP_OPS = (K.READ, K.DELETE, K.DESCRIBE, K.DESCRIBE_CONFIGS, K.ALTER_CONFIGS)
_NOT_HOSTED = "This server does not host this topic-partition."
_NOT_EMPTY = "The group is not empty."
_DENIED = "Not authorized to access the group."


class ShareAdminHandlers:
    """ShareGroupDescribe (77), DescribeShareGroupOffsets (90), AlterShareGroupOffsets (91)
    and DeleteShareGroupOffsets (92) (a protocol mixin)."""

    log = Logger()
    node: KafkaNode

    if TYPE_CHECKING:

        def _may(self, operation: int, resourceType: int, name: str) -> bool: ...

    def _notShare(self, groupId: str) -> str:
        """Why C{groupId} is no share group (GROUP_ID_NOT_FOUND's message, as Kafka words it)."""
        if self.node.shareGroups.otherKind(groupId):
            return f"Group {groupId} is not a share group."
        return f"Group {groupId} not found."

    # -- ShareGroupDescribe ----------------------------------------------------

    async def handle_share_group_describe(self, req: Request) -> dict[str, Any]:
        b = req.body
        coord = self.node.shareGroups
        out = []
        for groupId in b["group_ids"]:
            if not self._may(K.DESCRIBE, K.GROUP, groupId):
                out.append(_describeError(groupId, E.GROUP_AUTHORIZATION_FAILED, _DENIED))
                continue
            group = coord.groups.get(groupId)
            if group is None:
                out.append(_describeError(groupId, E.GROUP_ID_NOT_FOUND, self._notShare(groupId)))
                continue
            described = self._describe(group)
            used = {t for m in group.members.values() for t in m.topics}
            if any(not self._may(K.DESCRIBE, K.TOPIC, t) for t in sorted(used)):
                out.append(
                    _describeError(
                        groupId,
                        E.TOPIC_AUTHORIZATION_FAILED,
                        "The group uses topics the client may not describe.",
                    )
                )
                continue
            if b.get("include_authorized_operations"):
                described["authorized_operations"] = sum(
                    1 << op for op in _GROUP_OPS if self._may(op, K.GROUP, groupId)
                )
            out.append(described)
        return {"throttle_time_ms": 0, "groups": out}

    def _describe(self, group: ShareGroup) -> dict[str, Any]:
        coord = self.node.shareGroups
        topics = self.node.topics.topics
        members = []
        for m in group.members.values():
            assigned = coord._assignment(m)
            members.append(
                {
                    "member_id": m.memberId,
                    "rack_id": m.rackId,
                    "member_epoch": m.epoch,
                    "client_id": m.clientId,
                    "client_host": m.host,
                    "subscribed_topic_names": list(m.topics),
                    "assignment": {
                        "topic_partitions": [
                            {"topic_id": topics[t].topicId, "topic_name": t, "partitions": p}
                            for t, p in sorted(assigned.items())
                        ]
                    },
                }
            )
        return {
            "error_code": E.NONE,
            "error_message": None,
            "group_id": group.groupId,
            "group_state": group.state,
            "group_epoch": group.epoch,
            # every member's assignment is computed with the epoch it is given in
            "assignment_epoch": group.epoch,
            "assignor_name": "simple",
            "members": members,
            "authorized_operations": _UNKNOWN_OPS,
        }

    # -- DescribeShareGroupOffsets ---------------------------------------------

    async def handle_describe_share_group_offsets(self, req: Request) -> dict[str, Any]:
        return {
            "throttle_time_ms": 0,
            "groups": [self._startOffsets(g["group_id"], g["topics"]) for g in req.body["groups"]],
        }

    def _startOffsets(self, groupId: str, asked: list[dict[str, Any]] | None) -> dict[str, Any]:
        if not self._may(K.DESCRIBE, K.GROUP, groupId):
            return {
                "group_id": groupId,
                "topics": [],
                "error_code": E.GROUP_AUTHORIZATION_FAILED,
                "error_message": _DENIED,
            }
        group = self.node.shareGroups.groups.get(groupId)
        wanted: dict[str, list[int]] = {}
        if asked is None:
            # every partition the group has state of, and those its members are assigned
            if group is not None:
                for t, p in group.partitions:
                    wanted.setdefault(t, []).append(p)
                for m in group.members.values():
                    for t, parts in self.node.shareGroups._assignment(m).items():
                        wanted.setdefault(t, []).extend(parts)
            wanted = {t: ps for t, ps in wanted.items() if self._may(K.DESCRIBE, K.TOPIC, t)}
        else:
            for entry in asked:
                wanted.setdefault(entry["topic_name"], []).extend(entry["partitions"])
        known = self.node.topics.topics
        out = []
        for name, parts in sorted(wanted.items()):
            topic = known.get(name)
            allowed = self._may(K.DESCRIBE, K.TOPIC, name)
            rows = []
            for index in sorted(set(parts)):
                sp = group.partitions.get((name, index)) if group is not None else None
                row: dict[str, Any] = {
                    "partition_index": index,
                    # no state yet (or no such partition): no start offset (as Kafka)
                    "start_offset": sp.start if sp is not None else -1,
                    "leader_epoch": 0 if sp is not None else -1,
                    "error_code": E.NONE,
                    "error_message": None,
                }
                if not allowed:
                    row.update(
                        start_offset=-1,
                        leader_epoch=-1,
                        error_code=E.TOPIC_AUTHORIZATION_FAILED,
                        error_message="Not authorized to describe the topic.",
                    )
                rows.append(row)
            out.append(
                {
                    "topic_name": name,
                    "topic_id": topic.topicId if topic is not None and allowed else _NO_TOPIC,
                    "partitions": rows,
                }
            )
        return {"group_id": groupId, "topics": out, "error_code": E.NONE, "error_message": None}

    # -- AlterShareGroupOffsets --------------------------------------------------

    async def handle_alter_share_group_offsets(self, req: Request) -> dict[str, Any]:
        b = req.body
        groupId = b["group_id"]
        asked = b["topics"] or []
        coord = self.node.shareGroups

        def refused(code: int, message: str) -> dict[str, Any]:
            # the refusal of the whole group, repeated for every partition (as Kafka does)
            return {
                "throttle_time_ms": 0,
                "error_code": code,
                "error_message": message,
                "responses": [
                    {
                        "topic_name": t["topic_name"],
                        "topic_id": self._topicId(t["topic_name"]),
                        "partitions": [
                            _alterRow(p["partition_index"], code, message) for p in t["partitions"]
                        ],
                    }
                    for t in asked
                ],
            }

        if not self._may(K.READ, K.GROUP, groupId):
            return refused(E.GROUP_AUTHORIZATION_FAILED, _DENIED)
        if not groupId:
            return refused(E.INVALID_GROUP_ID, "The group id is empty.")
        if coord.otherKind(groupId):
            return refused(E.GROUP_ID_NOT_FOUND, self._notShare(groupId))
        group = coord.groups.get(groupId)
        if group is not None and group.members:
            return refused(E.NON_EMPTY_GROUP, _NOT_EMPTY)
        if not asked:
            return {"throttle_time_ms": 0, "error_code": E.NONE, "responses": []}
        try:
            group = await coord.create(groupId)
        except StorageError as e:
            return refused(E.KAFKA_STORAGE_ERROR, str(e))
        if group is None:
            return refused(E.COORDINATOR_NOT_AVAILABLE, "Too many groups.")
        known = self.node.topics.topics
        responses = []
        for t in asked:
            name = t["topic_name"]
            topic = known.get(name)
            rows = []
            for p in t["partitions"]:
                index, start = p["partition_index"], p["start_offset"]
                if not self._may(K.READ, K.TOPIC, name):
                    rows.append(_alterRow(index, E.TOPIC_AUTHORIZATION_FAILED, "Not authorized."))
                elif topic is None or not 0 <= index < topic.partitions:
                    rows.append(_alterRow(index, E.UNKNOWN_TOPIC_OR_PARTITION, _NOT_HOSTED))
                elif start < 0:
                    rows.append(_alterRow(index, E.INVALID_REQUEST, "Negative start offset."))
                elif not await coord.setStart(group, name, index, start):
                    rows.append(_alterRow(index, E.KAFKA_STORAGE_ERROR, "Not written."))
                else:
                    rows.append(_alterRow(index, E.NONE, None))
                    self.log.info(
                        "share group {group}: start offset of {topic}-{index} set to {offset}",
                        group=groupId,
                        topic=name,
                        index=index,
                        offset=start,
                    )
            responses.append(
                {"topic_name": name, "topic_id": self._topicId(name), "partitions": rows}
            )
        return {"throttle_time_ms": 0, "error_code": E.NONE, "responses": responses}

    def _topicId(self, name: str) -> uuid.UUID:
        topic = self.node.topics.topics.get(name)
        return topic.topicId if topic is not None else _NO_TOPIC

    # -- DeleteShareGroupOffsets ---------------------------------------------------

    async def handle_delete_share_group_offsets(self, req: Request) -> dict[str, Any]:
        b = req.body
        groupId = b["group_id"]
        coord = self.node.shareGroups

        def refused(code: int, message: str) -> dict[str, Any]:
            return {
                "throttle_time_ms": 0,
                "error_code": code,
                "error_message": message,
                "responses": [],
            }

        if not self._may(K.DELETE, K.GROUP, groupId):
            return refused(E.GROUP_AUTHORIZATION_FAILED, _DENIED)
        group = coord.groups.get(groupId)
        if group is None:
            return refused(E.GROUP_ID_NOT_FOUND, self._notShare(groupId))
        if group.members:
            return refused(E.NON_EMPTY_GROUP, _NOT_EMPTY)
        responses = []
        done: set[str] = set()
        for t in b["topics"] or []:
            name = t["topic_name"]
            if name in done:
                continue
            done.add(name)
            code, message = E.NONE, None
            if not self._may(K.READ, K.TOPIC, name):
                code, message = E.TOPIC_AUTHORIZATION_FAILED, "Not authorized."
            elif name not in self.node.topics.topics:
                code, message = E.UNKNOWN_TOPIC_OR_PARTITION, _NOT_HOSTED
            else:
                try:
                    if not await coord.forgetTopic(group, name):
                        code = E.UNKNOWN_TOPIC_OR_PARTITION
                        message = "There is no offset information to delete."
                except StorageError as e:
                    code, message = E.KAFKA_STORAGE_ERROR, str(e)
            if code == E.NONE:
                self.log.info(
                    "share group {group}: start offsets of {topic} deleted",
                    group=groupId,
                    topic=name,
                )
            responses.append(
                {
                    "topic_name": name,
                    "topic_id": self._topicId(name),
                    "error_code": code,
                    "error_message": message,
                }
            )
        return {"throttle_time_ms": 0, "error_code": E.NONE, "responses": responses}


def _describeError(groupId: str, code: int, message: str) -> dict[str, Any]:
    return {
        "error_code": code,
        "error_message": message,
        "group_id": groupId,
        "group_state": "",
        "group_epoch": 0,
        "assignment_epoch": 0,
        "assignor_name": "",
        "members": [],
        "authorized_operations": _UNKNOWN_OPS,
    }


def _alterRow(index: int, code: int, message: str | None) -> dict[str, Any]:
    return {"partition_index": index, "error_code": code, "error_message": message}
