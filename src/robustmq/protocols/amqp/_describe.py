"""
Read-only views of a node's AMQP state for operators (admin API, ctl, metrics).

JSON-able dicts shaped like RabbitMQ's management API (C{messages_ready},
C{messages_unacknowledged}, C{consumers}, ...) built from the
L{AMQPServer}'s virtual hosts and connections.  The admin layer formats these
and never reaches into the protocol's objects.
"""

from __future__ import annotations

import base64
import datetime
import decimal
from typing import TYPE_CHECKING, Any

from robustmq.protocols.amqp._model import Exchange, Queue

if TYPE_CHECKING:
    from robustmq.protocols.amqp._server import AMQPServer

__all__ = [
    "RATE_WINDOW",
    "describeBindings",
    "describeChannels",
    "describeConnections",
    "describeExchanges",
    "describeQueue",
    "describeQueues",
    "describeVhosts",
    "jsonable",
]

#: Seconds between two samples of a queue's counters for its publish and deliver rates.
RATE_WINDOW = 2.0


def jsonable(value: Any) -> Any:
    """An AMQP field value (table, array, bytes, timestamp, decimal) as JSON data."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(raw).decode("ascii")
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _unacked(server: AMQPServer) -> dict[Queue, int]:
    """Unacknowledged deliveries per queue, counted over every open channel."""
    counts: dict[Queue, int] = {}
    for conn in server.connections:
        for channel in conn.channels.values():
            for _, queue, _ in channel.unacked.values():
                if queue is not None:
                    counts[queue] = counts.get(queue, 0) + 1
    return counts


def _rates(queue: Queue, now: float) -> tuple[float, float]:
    """(published, delivered) per second over the last L{RATE_WINDOW} or more."""
    sample = getattr(queue, "rateSample", None)
    rates = getattr(queue, "rates", (0.0, 0.0))
    if sample is None:
        queue.rateSample = (now, queue.published, queue.delivered)  # type: ignore[attr-defined]
        return rates
    then, published, delivered = sample
    if now - then >= RATE_WINDOW:
        dt = now - then
        rates = ((queue.published - published) / dt, (queue.delivered - delivered) / dt)
        queue.rates = rates  # type: ignore[attr-defined]
        queue.rateSample = (now, queue.published, queue.delivered)  # type: ignore[attr-defined]
    return rates


def describeQueue(queue: Queue, unacked: int, now: float) -> dict[str, Any]:
    """One queue as RabbitMQ's C{/api/queues} shows it (the fields operators read)."""
    publishRate, deliverRate = _rates(queue, now)
    owner = queue.exclusiveOwner
    return {
        "vhost": queue.vhost.name,
        "name": queue.name,
        "type": queue.queueType,
        "durable": queue.durable,
        "auto_delete": queue.autoDelete,
        "exclusive": owner is not None,
        "owner": getattr(owner, "peer", None) if owner is not None else None,
        "arguments": jsonable(queue.arguments),
        "messages": queue.count + unacked,
        "messages_ready": queue.count,
        "messages_unacknowledged": unacked,
        "message_bytes_ready": queue.bytes,
        "consumers": len(queue.consumers),
        "max_length": queue.maxLength,
        "max_length_bytes": queue.maxBytes,
        "overflow": queue.overflow,
        "published": queue.published,
        "delivered": queue.delivered,
        "publish_rate": round(publishRate, 3),
        "deliver_rate": round(deliverRate, 3),
        "dropped": dict(sorted(queue.dropped.items())),
    }


def describeQueues(
    server: AMQPServer, now: float, vhost: str | None = None
) -> list[dict[str, Any]]:
    """Every queue (of one vhost, if given), sorted by vhost and name."""
    unacked = _unacked(server)
    out = []
    for vname in sorted(server.vhosts):
        if vhost is not None and vname != vhost:
            continue
        v = server.vhosts[vname]
        for name in sorted(v.queues):
            q = v.queues[name]
            out.append(describeQueue(q, unacked.get(q, 0), now))
    return out


def _describeExchange(vhost: str, ex: Exchange) -> dict[str, Any]:
    return {
        "vhost": vhost,
        "name": ex.name,
        "type": ex.type,
        "durable": ex.durable,
        "auto_delete": ex.autoDelete,
        "internal": ex.internal,
        "arguments": jsonable(ex.arguments),
        "bindings": len(ex.bindings),
    }


def describeExchanges(server: AMQPServer, vhost: str | None = None) -> list[dict[str, Any]]:
    """Every exchange (the default one is named C{""}), sorted by vhost and name."""
    out: list[dict[str, Any]] = []
    for vname in sorted(server.vhosts):
        if vhost is not None and vname != vhost:
            continue
        v = server.vhosts[vname]
        out.extend(_describeExchange(vname, v.exchanges[n]) for n in sorted(v.exchanges))
    return out


def describeBindings(server: AMQPServer, vhost: str | None = None) -> list[dict[str, Any]]:
    """Every binding, as C{rabbitmqctl list_bindings}: the default exchange's implicit
    binding of each queue first, then exchange to queue and exchange to exchange."""
    out = []
    for vname in sorted(server.vhosts):
        if vhost is not None and vname != vhost:
            continue
        v = server.vhosts[vname]
        for name in sorted(v.queues):
            out.append(
                {
                    "vhost": vname,
                    "source": "",
                    "destination": name,
                    "destination_type": "queue",
                    "routing_key": name,
                    "arguments": {},
                }
            )
        rows = []
        for exName in sorted(v.exchanges):
            ex = v.exchanges[exName]
            for (dest, key, _), args in ex.bindings.items():
                rows.append(
                    {
                        "vhost": vname,
                        "source": exName,
                        "destination": dest.name,
                        "destination_type": "queue" if isinstance(dest, Queue) else "exchange",
                        "routing_key": key,
                        "arguments": jsonable(args),
                    }
                )
        rows.sort(key=lambda r: (r["source"], r["destination"], r["routing_key"]))
        out.extend(rows)
    return out


def describeConnections(server: AMQPServer) -> list[dict[str, Any]]:
    """Open AMQP connections: peer, user, vhost, channels, client properties."""
    out = []
    for conn in server.connections:
        props = jsonable(conn.clientProperties or {})
        listener = getattr(conn, "listener", None)
        out.append(
            {
                "name": conn.peer,
                "peer": conn.peer,
                "user": conn.user,
                "vhost": conn.vhost.name if conn.vhost is not None else None,
                "listener": getattr(listener, "label", None),
                "channels": len(conn.channels),
                "heartbeat": conn.heartbeat,
                "frame_max": conn.frameMax,
                "blocked": bool(conn.blocked),
                "client_properties": props,
                "product": props.get("product") if isinstance(props, dict) else None,
            }
        )
    out.sort(key=lambda c: c["peer"])
    return out


def describeChannels(server: AMQPServer) -> list[dict[str, Any]]:
    """Open channels of every connection: consumers, unacknowledged, prefetch, mode."""
    out = []
    for conn in server.connections:
        for number in sorted(conn.channels):
            ch = conn.channels[number]
            out.append(
                {
                    "connection": conn.peer,
                    "number": number,
                    "name": f"{conn.peer} ({number})",
                    "user": conn.user,
                    "vhost": ch.vhost.name if ch.vhost is not None else None,
                    "consumers": len(ch.consumers),
                    "messages_unacknowledged": len(ch.unacked),
                    "prefetch_count": ch.prefetchCount or ch.consumerPrefetch,
                    "confirm": ch.confirm,
                    "transactional": ch.tx,
                }
            )
    out.sort(key=lambda c: (c["connection"], c["number"]))
    return out


def describeVhosts(server: AMQPServer) -> list[dict[str, Any]]:
    """Virtual hosts with their queue, exchange, message and connection counts."""
    unacked = _unacked(server)
    conns: dict[str, int] = {}
    for conn in server.connections:
        if conn.vhost is not None:
            conns[conn.vhost.name] = conns.get(conn.vhost.name, 0) + 1
    out = []
    for name in sorted(server.vhosts):
        v = server.vhosts[name]
        ready = sum(q.count for q in v.queues.values())
        unack = sum(unacked.get(q, 0) for q in v.queues.values())
        out.append(
            {
                "name": name,
                "queues": len(v.queues),
                "exchanges": len(v.exchanges),
                "messages": ready + unack,
                "messages_ready": ready,
                "messages_unacknowledged": unack,
                "connections": conns.get(name, 0),
            }
        )
    return out


def metricRows(server: AMQPServer, limit: int) -> dict[str, Any]:
    """Per-queue depth, unacknowledged, consumers and counters for C{/metrics}.

    At most C{limit} queues (by vhost and name), so label cardinality has a
    bound; the others are counted in C{omitted}.
    """
    unacked = _unacked(server)
    rows: list[tuple[str, str, int, int, int, int, int, int]] = []
    total = 0
    for vname in sorted(server.vhosts):
        v = server.vhosts[vname]
        for name in sorted(v.queues):
            total += 1
            if len(rows) >= limit:
                continue
            q = v.queues[name]
            rows.append(
                (
                    vname,
                    name,
                    q.count,
                    unacked.get(q, 0),
                    len(q.consumers),
                    q.published,
                    q.delivered,
                    sum(q.dropped.values()),
                )
            )
    return {"queues": rows, "omitted": {"amqp_queue": max(total - len(rows), 0)}}
