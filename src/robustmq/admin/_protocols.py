"""Admin API endpoints for Kafka and AMQP (C{robustmq ctl kafka|amqp}, the dashboard).

Each protocol's node-wide state is its node service
(C{broker.nodeServices["kafka"]}, C{["amqp"]}); these handlers call the
services' read-only C{describe...()} methods and their few actions (delete a
topic or group; purge or delete a queue, delete an exchange) and page the
results.  The admin layer never reaches into protocol objects.

A node that serves no Kafka (or AMQP) listener has no such service: its
endpoints answer 404 with a message that says so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from twisted.web import server

from robustmq.admin._http import APIError, Route, queryArgs

if TYPE_CHECKING:
    from robustmq.core.broker import Broker

Params = dict[str, str]
Pager = Callable[[server.Request, Sequence[Any], Callable[[Any], Any]], dict[str, Any]]


def _flag(request: server.Request, name: str) -> bool:
    value = queryArgs(request).get(name, "")
    if value.lower() in ("", "false", "0", "no"):
        return False
    if value.lower() in ("true", "1", "yes"):
        return True
    raise APIError(400, f"query parameter {name!r}: expected true or false, got {value!r}")


def _only(request: server.Request, allowed: Sequence[str]) -> dict[str, str]:
    q = queryArgs(request)
    known = {"page", "limit", *allowed}
    unknown = sorted(set(q) - known)
    if unknown:
        raise APIError(400, f"unknown query parameter {unknown[0]!r}; known: {sorted(known)}")
    return q


class ProtocolsAPI:
    """Handlers over the node's Kafka and AMQP services.

    @param page: pages a list the way every list endpoint does
        (L{robustmq.admin._api.AdminAPI._page}).
    """

    def __init__(self, broker: Broker, page: Pager) -> None:
        self.broker = broker
        self.page = page

    def routes(self, v1: str) -> list[Route]:
        """The Kafka and AMQP endpoints under C{v1}."""
        k, a = f"{v1}/kafka", f"{v1}/amqp"
        return [
            Route("GET", f"{k}/topics", self.kafkaTopics),
            Route("GET", f"{k}/topics/{{topic}}", self.kafkaTopic),
            Route("DELETE", f"{k}/topics/{{topic}}", self.kafkaDeleteTopic),
            Route("GET", f"{k}/groups", self.kafkaGroups),
            Route("GET", f"{k}/groups/{{group}}", self.kafkaGroup),
            Route("DELETE", f"{k}/groups/{{group}}", self.kafkaDeleteGroup),
            Route("GET", f"{a}/vhosts", self.amqpVhosts),
            Route("GET", f"{a}/queues", self.amqpQueues),
            Route("GET", f"{a}/queues/{{vhost}}/{{queue}}", self.amqpQueue),
            Route("DELETE", f"{a}/queues/{{vhost}}/{{queue}}", self.amqpDeleteQueue),
            Route("DELETE", f"{a}/queues/{{vhost}}/{{queue}}/contents", self.amqpPurge),
            Route("GET", f"{a}/exchanges", self.amqpExchanges),
            Route("DELETE", f"{a}/exchanges/{{vhost}}/{{exchange}}", self.amqpDeleteExchange),
            Route("GET", f"{a}/bindings", self.amqpBindings),
            Route("DELETE", f"{a}/bindings/{{vhost}}", self.amqpDeleteBinding),
            Route("GET", f"{a}/connections", self.amqpConnections),
            Route("GET", f"{a}/channels", self.amqpChannels),
        ]

    def _service(self, protocol: str) -> Any:
        service = self.broker.nodeServices.get(protocol)
        if service is None:
            raise APIError(
                404,
                f"this node serves no {protocol.upper() if protocol == 'amqp' else 'Kafka'} "
                f'(no [[listeners]] with protocol = "{protocol}")',
            )
        return service

    # Kafka

    async def kafkaTopics(self, request: server.Request, params: Params) -> Any:
        """Topics with partitions, sizes, log start/end offsets and configs; filter C{topic}."""
        q = _only(request, ("topic",))
        want = q.get("topic")
        topics = await self._service("kafka").describeTopics()
        found = [t for t in topics if not want or want in t["name"]]
        return self.page(request, found, lambda t: t)

    async def kafkaTopic(self, request: server.Request, params: Params) -> Any:
        """One topic with its partitions."""
        topic = await self._service("kafka").describeTopic(params["topic"])
        if topic is None:
            raise APIError(404, f"no Kafka topic {params['topic']!r}")
        return topic

    async def kafkaDeleteTopic(self, request: server.Request, params: Params) -> Any:
        """Delete a topic and its partitions' data."""
        if not await self._service("kafka").deleteTopic(params["topic"]):
            raise APIError(404, f"no Kafka topic {params['topic']!r}")
        return {"deleted": params["topic"]}

    async def kafkaGroups(self, request: server.Request, params: Params) -> Any:
        """Consumer groups: state, protocol, members, committed offsets and lag; filter C{group}."""
        q = _only(request, ("group",))
        want = q.get("group")
        groups = await self._service("kafka").describeGroups()
        found = [g for g in groups if not want or want in g["group_id"]]
        return self.page(request, found, lambda g: g)

    async def kafkaGroup(self, request: server.Request, params: Params) -> Any:
        """One consumer group."""
        group = await self._service("kafka").describeGroup(params["group"])
        if group is None:
            raise APIError(404, f"no Kafka consumer group {params['group']!r}")
        return group

    async def kafkaDeleteGroup(self, request: server.Request, params: Params) -> Any:
        """Delete a group with no members (its name and state)."""
        why = await self._service("kafka").deleteGroup(params["group"])
        if why == "unknown":
            raise APIError(404, f"no Kafka consumer group {params['group']!r}")
        if why is not None:
            raise APIError(409, f"group {params['group']!r} is {why}: stop its consumers first")
        return {"deleted": params["group"]}

    # AMQP

    def amqpVhosts(self, request: server.Request, params: Params) -> Any:
        """Virtual hosts with their queue, exchange, message and connection counts."""
        return {"data": self._service("amqp").describeVhosts()}

    def amqpQueues(self, request: server.Request, params: Params) -> Any:
        """Queues: ready/unacknowledged messages, consumers, durable, arguments, rates, drops.

        Filters: C{vhost} (exact), C{name} (substring).
        """
        q = _only(request, ("vhost", "name"))
        found = [
            row
            for row in self._service("amqp").describeQueues(q.get("vhost"))
            if not q.get("name") or q["name"] in row["name"]
        ]
        return self.page(request, found, lambda r: r)

    def amqpQueue(self, request: server.Request, params: Params) -> Any:
        """One queue."""
        row = self._service("amqp").describeQueue(params["vhost"], params["queue"])
        if row is None:
            raise APIError(404, f"no queue {params['queue']!r} in vhost {params['vhost']!r}")
        return row

    def amqpDeleteQueue(self, request: server.Request, params: Params) -> Any:
        """Delete a queue; C{if_empty} and C{if_unused} as Queue.Delete has them."""
        _only(request, ("if_empty", "if_unused"))
        result = self._service("amqp").deleteQueue(
            params["vhost"],
            params["queue"],
            ifEmpty=_flag(request, "if_empty"),
            ifUnused=_flag(request, "if_unused"),
        )
        if result is None:
            raise APIError(404, f"no queue {params['queue']!r} in vhost {params['vhost']!r}")
        if isinstance(result, str):
            raise APIError(409, result)
        return {"deleted": params["queue"], "vhost": params["vhost"], "messages": result}

    def amqpPurge(self, request: server.Request, params: Params) -> Any:
        """Drop a queue's ready messages (RabbitMQ: DELETE .../contents)."""
        n = self._service("amqp").purgeQueue(params["vhost"], params["queue"])
        if n is None:
            raise APIError(404, f"no queue {params['queue']!r} in vhost {params['vhost']!r}")
        return {"purged": params["queue"], "vhost": params["vhost"], "messages": n}

    def amqpExchanges(self, request: server.Request, params: Params) -> Any:
        """Exchanges (the default exchange's name is ""); filter C{vhost}."""
        q = _only(request, ("vhost",))
        return self.page(
            request, self._service("amqp").describeExchanges(q.get("vhost")), lambda r: r
        )

    def amqpDeleteExchange(self, request: server.Request, params: Params) -> Any:
        """Delete an exchange and its bindings; C{if_unused} as Exchange.Delete has it."""
        _only(request, ("if_unused",))
        why = self._service("amqp").deleteExchange(
            params["vhost"], params["exchange"], ifUnused=_flag(request, "if_unused")
        )
        if why == "unknown":
            raise APIError(404, f"no exchange {params['exchange']!r} in vhost {params['vhost']!r}")
        if why is not None:
            raise APIError(409, why)
        return {"deleted": params["exchange"], "vhost": params["vhost"]}

    def amqpBindings(self, request: server.Request, params: Params) -> Any:
        """Bindings (the default exchange's implicit ones first); filter C{vhost}."""
        q = _only(request, ("vhost",))
        return self.page(
            request, self._service("amqp").describeBindings(q.get("vhost")), lambda r: r
        )

    def amqpDeleteBinding(self, request: server.Request, params: Params) -> Any:
        """Delete the bindings C{source} → C{destination} with C{routing_key} (query
        parameters; C{destination_type} C{queue}, the default, or C{exchange})."""
        q = _only(request, ("source", "destination", "destination_type", "routing_key"))
        kind = q.get("destination_type", "queue")
        if kind not in ("queue", "exchange"):
            raise APIError(400, "destination_type: 'queue' or 'exchange'")
        for name in ("source", "destination"):
            if not q.get(name):
                raise APIError(400, f"query parameter {name!r} is required")
        n = self._service("amqp").deleteBinding(
            params["vhost"], q["source"], q["destination"], kind, q.get("routing_key", "")
        )
        if n is None:
            raise APIError(
                404,
                f"no exchange {q['source']!r} or {kind} {q['destination']!r} in vhost "
                f"{params['vhost']!r}",
            )
        if n == 0:
            raise APIError(404, "no such binding")
        return {"deleted": n, "vhost": params["vhost"]}

    def amqpConnections(self, request: server.Request, params: Params) -> Any:
        """Open AMQP connections: peer, user, vhost, channels, client properties."""
        _only(request, ())
        return self.page(request, self._service("amqp").describeConnections(), lambda r: r)

    def amqpChannels(self, request: server.Request, params: Params) -> Any:
        """Open AMQP channels: consumers, unacknowledged messages, prefetch, confirm mode."""
        _only(request, ())
        return self.page(request, self._service("amqp").describeChannels(), lambda r: r)


__all__ = ["ProtocolsAPI"]
