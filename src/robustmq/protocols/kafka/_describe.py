"""
Read-only views of a node's Kafka state for operators (admin API, ctl, metrics).

Plain JSON-able dicts built from the L{KafkaNode}'s topics, group coordinator
and shard store: what C{kafka-topics --describe} and
C{kafka-consumer-groups --describe} show.  Nothing here changes state; the
admin layer formats these and never reaches into the protocol's objects.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from robustmq.protocols.kafka import _configs as C
from robustmq.protocols.kafka._topics import shardName

if TYPE_CHECKING:
    from robustmq.protocols.kafka._node import KafkaNode

__all__ = ["decodeAssignment", "describeGroup", "describeGroups", "describeTopic", "describeTopics"]

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")


def decodeAssignment(data: bytes) -> list[dict[str, Any]] | None:
    """The C{[{topic, partitions}]} of a C{consumer} protocol assignment, or None.

    The layout is the consumer protocol's C{ConsumerProtocolAssignment}
    (version int16, then an array of (topic string, int32 array), then user
    data); anything else (a non-consumer protocol, a truncated blob) is None.
    """
    try:
        pos = 2
        (n,) = _I32.unpack_from(data, pos)
        pos += 4
        out = []
        for _ in range(max(n, 0)):
            (length,) = _I16.unpack_from(data, pos)
            pos += 2
            topic = bytes(data[pos : pos + length]).decode("utf-8")
            pos += length
            (count,) = _I32.unpack_from(data, pos)
            pos += 4
            parts = [_I32.unpack_from(data, pos + 4 * i)[0] for i in range(max(count, 0))]
            pos += 4 * max(count, 0)
            out.append({"topic": topic, "partitions": parts})
        return out
    except (struct.error, UnicodeDecodeError):
        return None


def _usage(store: Any, shard: str) -> tuple[int | None, int | None]:
    usage = getattr(store, "shardUsage", None)
    if usage is None:
        return None, None
    try:
        records, size = usage(shard)
    except KeyError:
        return None, None
    return int(records), int(size)


async def _partitionRows(node: KafkaNode, name: str, count: int) -> list[dict[str, Any]]:
    topics = node.topics
    rows = []
    for index in range(count):
        shard = shardName(name, index)
        try:
            start, end = await topics.store.offsets(shard)
        except KeyError:
            continue
        part = topics.partitions.get(shard)
        _, size = _usage(topics.store, shard)
        rows.append(
            {
                "partition": index,
                "log_start_offset": start,
                "log_end_offset": end,
                "last_stable_offset": part.lastStable() if part is not None else end,
                "messages": max(end - start, 0),
                "bytes": size,
                "open_transactions": len(part.ongoing) if part is not None else 0,
            }
        )
    return rows


def effectiveTopicConfigs(node: KafkaNode, own: dict[str, str]) -> dict[str, str]:
    """A topic's configs as DescribeConfigs reports them: its own values, else the
    broker's (dynamic, then static) through each key's synonym (C{log.retention.ms})."""
    static = C.staticBrokerValues(node)
    dynamic = node.configs.broker
    out: dict[str, str] = {}
    for name, key in C.topicKeys.items():
        if name in own:
            out[name] = own[name]
        elif key.synonym in dynamic:
            out[name] = dynamic[key.synonym]
        elif key.synonym in static:
            out[name] = static[key.synonym]
    for name, value in sorted(own.items()):
        out.setdefault(name, value)
    return out


async def describeTopic(node: KafkaNode, name: str) -> dict[str, Any] | None:
    """One topic with its partitions, offsets, sizes and configs; None if unknown."""
    topic = node.topics.topics.get(name)
    if topic is None:
        return None
    parts = await _partitionRows(node, name, topic.partitions)
    sizes = [p["bytes"] for p in parts]
    configs = effectiveTopicConfigs(node, topic.configs)
    return {
        "name": name,
        "partitions": topic.partitions,
        "messages": sum(p["messages"] for p in parts),
        "bytes": None if None in sizes else sum(sizes),
        "configs": configs,
        "overrides": sorted(topic.configs),
        "partition_details": parts,
    }


async def describeTopics(node: KafkaNode) -> list[dict[str, Any]]:
    """Every topic (as L{describeTopic}), sorted by name."""
    out = []
    for name in sorted(node.topics.topics):
        d = await describeTopic(node, name)
        if d is not None:
            out.append(d)
    return out


async def describeGroup(node: KafkaNode, groupId: str) -> dict[str, Any] | None:
    """One consumer group: state, protocol, members and, per partition, committed offset and lag.

    A group known only by its committed offsets (no member since the last
    restart) is C{Empty}; an unknown name is None.
    """
    coordinator = node.groups
    group = coordinator.groups.get(groupId)
    if group is None and groupId not in node.knownGroups:
        return None
    members = []
    assigned: dict[tuple[str, int], str] = {}
    if group is not None:
        for m in group.members.values():
            assignment = decodeAssignment(m.assignment) if m.assignment else []
            for a in assignment or []:
                for p in a["partitions"]:
                    assigned[(a["topic"], p)] = m.memberId
            members.append(
                {
                    "member_id": m.memberId,
                    "instance_id": m.instanceId,
                    "client_id": m.clientId,
                    "client_host": m.clientHost,
                    "session_timeout_ms": m.sessionTimeout,
                    "assignment": assignment,
                }
            )
    store = node.topics.store
    offsets = []
    for name in sorted(node.topics.topics):
        topic = node.topics.topics[name]
        for index in range(topic.partitions):
            shard = shardName(name, index)
            committed = await store.fetchOffset(groupId, shard)
            owner = assigned.get((name, index))
            if committed is None and owner is None:
                continue
            try:
                _, end = await store.offsets(shard)
            except KeyError:
                continue
            offset = committed[0] if committed is not None else None
            offsets.append(
                {
                    "topic": name,
                    "partition": index,
                    "committed_offset": offset,
                    "log_end_offset": end,
                    "lag": max(end - offset, 0) if offset is not None else None,
                    "member_id": owner,
                }
            )
    lags = [o["lag"] for o in offsets if o["lag"] is not None]
    return {
        "group_id": groupId,
        "state": group.state if group is not None else "Empty",
        "protocol_type": (group.protocolType if group is not None else None) or "consumer",
        "protocol": group.protocol if group is not None else None,
        "generation": group.generation if group is not None else None,
        "leader": group.leader if group is not None else None,
        "members": members,
        "offsets": offsets,
        "lag": sum(lags),
    }


async def describeGroups(node: KafkaNode) -> list[dict[str, Any]]:
    """Every group the coordinator holds or that committed offsets, sorted by id."""
    out = []
    for groupId in sorted(set(node.groups.groups) | node.knownGroups):
        d = await describeGroup(node, groupId)
        if d is not None:
            out.append(d)
    return out


def _fired(d: Any) -> Any:
    """The result of a Deferred that has already fired (memory, segment stores), else None."""
    out: list[Any] = []
    d.addCallbacks(out.append, lambda f: None)
    return out[0] if out else None


def metricRows(node: KafkaNode, limit: int) -> dict[str, Any]:
    """Per-partition offsets and sizes and per-group lag for C{/metrics}, without waiting.

    At most C{limit} partitions and C{limit} group partitions (by name), so
    label cardinality has a bound; what is left out is counted in
    C{omitted}.  Values the store cannot give at once (a remote store's
    offsets) are left out of that scrape.
    """
    store = node.topics.store
    partitions: list[tuple[str, int, int, int, int | None]] = []
    ends: dict[str, int] = {}
    total = 0
    for name in sorted(node.topics.topics):
        topic = node.topics.topics[name]
        for index in range(topic.partitions):
            total += 1
            shard = shardName(name, index)
            offsets = _fired(store.offsets(shard))
            if offsets is None:
                continue
            ends[shard] = offsets[1]
            if len(partitions) < limit:
                _, size = _usage(store, shard)
                partitions.append((name, index, offsets[0], offsets[1], size))
    groups: list[tuple[str, str, int, int, int]] = []
    groupTotal = 0
    for groupId in sorted(set(node.groups.groups) | node.knownGroups):
        for name in sorted(node.topics.topics):
            for index in range(node.topics.topics[name].partitions):
                shard = shardName(name, index)
                committed = _fired(store.fetchOffset(groupId, shard))
                if committed is None or shard not in ends:
                    continue
                groupTotal += 1
                if len(groups) < limit:
                    lag = max(ends[shard] - committed[0], 0)
                    groups.append((groupId, name, index, committed[0], lag))
    return {
        "partitions": partitions,
        "groups": groups,
        "omitted": {
            "kafka_partition": max(total - len(partitions), 0),
            "kafka_group_partition": max(groupTotal - len(groups), 0),
        },
    }
