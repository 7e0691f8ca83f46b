"""
Admin API handlers: configs, record deletion, log dirs, leaders, reassignments, SCRAM users.

A mixin of L{KafkaServerProtocol} (which dispatches C{handle_<name>} by API
key).  This node is the only broker: it leads every partition with its one
replica, so leader elections and reassignments have nothing to move and
say so as Kafka does for a partition already in place (KIP-460, KIP-455).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from robustmq.protocols.kafka import _configs as C
from robustmq.protocols.kafka import _errors as E

if TYPE_CHECKING:
    from robustmq.protocols.kafka._codec import Request
    from robustmq.protocols.kafka._node import KafkaNode

__all__ = ["AdminHandlers"]

#: IncrementalAlterConfigs operations (KIP-339)
SET, DELETE, APPEND, SUBTRACT = 0, 1, 2, 3
#: AlterUserScramCredentials mechanisms (KIP-554) -> hashlib names
SCRAM_MECHANISMS = {1: "sha256", 2: "sha512"}
#: Kafka's bounds on SCRAM iterations
MIN_ITERATIONS, MAX_ITERATIONS = 4096, 16384


class AdminHandlers:
    """Handlers for the admin APIs (mixed into the connection's protocol)."""

    node: KafkaNode
    log = Logger()

    # -- configs (KIP-133, KIP-226, KIP-339, KIP-569) ----------------------

    def _brokerName(self, name: str) -> bool:
        return name in ("", str(self.node.settings.broker_id))

    def _describeResource(
        self, rtype: int, name: str, keys: list[str] | None, synonyms: bool
    ) -> tuple[int, str | None, list[dict[str, Any]]]:
        rtype = _configType(rtype)
        node = self.node
        dyn = node.configs
        static = C.staticBrokerValues(node)
        brokerDyn = dyn.broker
        out: list[dict[str, Any]] = []

        def brokerChain(bkey: str) -> list[tuple[str, str, int]]:
            chain = []
            if bkey in brokerDyn:
                chain.append((bkey, brokerDyn[bkey], C.DYNAMIC_BROKER_CONFIG))
            if bkey in static:
                chain.append((bkey, static[bkey], C.STATIC_BROKER_CONFIG))
            return chain

        def add(key: C.ConfigKey | None, nm: str, chain: list[tuple[str, str, int]], ro: bool):
            if keys is not None and nm not in keys:
                return
            if not chain:
                return
            _, value, source = chain[0]
            syn = [{"name": n, "value": v, "source": s} for n, v, s in chain] if synonyms else []
            out.append(C.entry(key, nm, value, source, ro, syn))

        if rtype == C.TOPIC:
            topic = node.topics.topics.get(name)
            if topic is None:
                return E.UNKNOWN_TOPIC_OR_PARTITION, f"topic {name!r} does not exist", []
            own = topic.configs
            for k, key in C.topicKeys.items():
                chain = [(k, own[k], C.TOPIC_CONFIG)] if k in own else []
                if key.synonym:
                    # without its own value a topic takes the broker's (a static one
                    # is reported as the topic default, as Kafka does)
                    chain += [
                        (n, v, C.DEFAULT_CONFIG if s == C.STATIC_BROKER_CONFIG else s)
                        for n, v, s in brokerChain(key.synonym)
                    ]
                add(key, k, chain, False)
            for k, v in sorted(own.items()):
                if k not in C.topicKeys:
                    add(None, k, [(k, v, C.TOPIC_CONFIG)], False)
        elif rtype == C.BROKER:
            if not self._brokerName(name):
                return E.INVALID_REQUEST, f"this node is broker {node.settings.broker_id}", []
            for k, key in C.brokerKeys.items():
                add(key, k, brokerChain(k), not key.dynamic)
        elif rtype == C.GROUP:
            own = dyn.groups.get(name, {})
            defaults = C.groupDefaults()
            for k, key in C.groupKeys.items():
                chain = [(k, own[k], C.GROUP_CONFIG)] if k in own else []
                if key.synonym:
                    chain += [
                        (n, v, C.DEFAULT_CONFIG if s == C.STATIC_BROKER_CONFIG else s)
                        for n, v, s in brokerChain(key.synonym)
                    ]
                elif k in defaults:
                    chain.append((k, defaults[k], C.DEFAULT_CONFIG))
                add(key, k, chain, False)
        else:
            return E.INVALID_REQUEST, f"resource type {rtype} has no configs here", []
        return E.NONE, None, out

    async def handle_describe_configs(self, req: Request) -> dict[str, Any]:
        b = req.body
        synonyms = bool(b.get("include_synonyms", False))
        results = []
        for res in b["resources"]:
            code, msg, configs = self._describeResource(
                res["resource_type"], res["resource_name"], res["configuration_keys"], synonyms
            )
            results.append(
                {
                    "error_code": code,
                    "error_message": msg,
                    "resource_type": res["resource_type"],
                    "resource_name": res["resource_name"],
                    "configs": configs,
                }
            )
        return {"throttle_time_ms": 0, "results": results}

    def _keysOf(self, rtype: int) -> dict[str, C.ConfigKey]:
        rtype = _configType(rtype)
        return {C.TOPIC: C.topicKeys, C.BROKER: C.brokerKeys, C.GROUP: C.groupKeys}[rtype]

    def _checkResource(self, rtype: int, name: str) -> tuple[int, str | None]:
        rtype = _configType(rtype)
        if rtype == C.TOPIC:
            if name not in self.node.topics.topics:
                return E.UNKNOWN_TOPIC_OR_PARTITION, f"topic {name!r} does not exist"
        elif rtype == C.BROKER:
            if not self._brokerName(name):
                return E.INVALID_REQUEST, f"this node is broker {self.node.settings.broker_id}"
        elif rtype == C.GROUP:
            if not name:
                return E.INVALID_GROUP_ID, "a group config needs a group id"
        else:
            return E.INVALID_REQUEST, f"resource type {rtype} cannot be altered here"
        return E.NONE, None

    def _current(self, rtype: int, name: str) -> dict[str, str]:
        rtype = _configType(rtype)
        if rtype == C.TOPIC:
            return dict(self.node.topics.topics[name].configs)
        return dict(self.node.configs.of(rtype, name))

    def _validated(self, rtype: int, values: dict[str, str]) -> dict[str, str]:
        """Check every name and value; raise L{C.ConfigError} for the first bad one."""
        rtype = _configType(rtype)
        known = self._keysOf(rtype)
        out = {}
        for k, v in values.items():
            key = known.get(k)
            if key is None:
                raise C.ConfigError(f"unknown config {k!r}")
            if rtype == C.BROKER and not key.dynamic:
                raise C.ConfigError(f"{k} cannot be updated dynamically (read-only)")
            out[k] = key.validate(v)
        return out

    async def _apply(self, rtype: int, name: str, values: dict[str, str]) -> None:
        """Store the new config set of one resource and make it take effect."""
        rtype = _configType(rtype)
        node = self.node
        if rtype == C.TOPIC:
            await node.topics.setTopicConfigs(name, values)
        else:
            await node.configs.save(rtype, name, values)
            if rtype == C.BROKER:
                await node.topics.brokerDefaultsChanged()
            elif rtype == C.GROUP:
                node.groupConfigsChanged(name)
        self.log.info(
            "configs of {kind} {name} set to {values}",
            kind={C.TOPIC: "topic", C.BROKER: "broker", C.GROUP: "group"}[rtype],
            name=name,
            values=values,
        )

    async def handle_alter_configs(self, req: Request) -> dict[str, Any]:
        """AlterConfigs (KIP-133): each resource's dynamic configs are replaced as a whole."""
        b = req.body
        out = []
        for res in b["resources"]:
            rtype, name = res["resource_type"], res["resource_name"]
            code, msg = self._checkResource(rtype, name)
            if code == E.NONE:
                given = {c["name"]: c["value"] for c in res["configs"] if c["value"] is not None}
                try:
                    values = self._validated(rtype, given)
                    if not b["validate_only"]:
                        await self._apply(rtype, name, values)
                except C.ConfigError as e:
                    code, msg = E.INVALID_CONFIG, str(e)
            out.append(
                {
                    "error_code": code,
                    "error_message": msg,
                    "resource_type": rtype,
                    "resource_name": name,
                }
            )
        return {"throttle_time_ms": 0, "responses": out}

    async def handle_incremental_alter_configs(self, req: Request) -> dict[str, Any]:
        """IncrementalAlterConfigs (KIP-339): SET, DELETE, APPEND and SUBTRACT per key."""
        b = req.body
        out = []
        for res in b["resources"]:
            rtype, name = res["resource_type"], res["resource_name"]
            code, msg = self._checkResource(rtype, name)
            if code == E.NONE:
                try:
                    values = self._current(rtype, name)
                    known = self._keysOf(rtype)
                    for c in res["configs"]:
                        k, op, v = c["name"], c["config_operation"], c["value"]
                        key = known.get(k)
                        if key is None:
                            raise C.ConfigError(f"unknown config {k!r}")
                        if rtype == C.BROKER and not key.dynamic:
                            raise C.ConfigError(f"{k} cannot be updated dynamically (read-only)")
                        if op == SET:
                            values[k] = key.validate(v)
                        elif op == DELETE:
                            values.pop(k, None)
                        elif op in (APPEND, SUBTRACT):
                            if key.type != C.LIST:
                                raise C.ConfigError(f"{k} is not a list: cannot append/subtract")
                            if k in values:
                                current = values[k]
                            else:  # Kafka appends to the default value when unset
                                _, _, eff = self._describeResource(rtype, name, [k], False)
                                current = eff[0]["value"] if eff else ""
                            have = [x for x in (current or "").split(",") if x]
                            items = [x.strip() for x in (v or "").split(",") if x.strip()]
                            if op == APPEND:
                                have += [x for x in items if x not in have]
                            else:
                                have = [x for x in have if x not in items]
                            values[k] = key.validate(",".join(have))
                        else:
                            raise C.ConfigError(f"unknown operation {op}")
                    if not b["validate_only"]:
                        await self._apply(rtype, name, values)
                except C.ConfigError as e:
                    code, msg = E.INVALID_CONFIG, str(e)
            out.append(
                {
                    "error_code": code,
                    "error_message": msg,
                    "resource_type": rtype,
                    "resource_name": name,
                }
            )
        return {"throttle_time_ms": 0, "resources": out}

    # -- records and log dirs --------------------------------------------

    async def handle_delete_records(self, req: Request) -> dict[str, Any]:
        """DeleteRecords (KIP-107): move each partition's log start offset forward."""
        topics = self.node.topics
        out = []
        for t in req.body["topics"]:
            presp = []
            for p in t["partitions"]:
                r: dict[str, Any] = {
                    "partition_index": p["partition_index"],
                    "low_watermark": -1,
                    "error_code": E.NONE,
                }
                presp.append(r)
                part = await topics.partition(t["name"], p["partition_index"])
                if part is None:
                    r["error_code"] = E.UNKNOWN_TOPIC_OR_PARTITION
                    continue
                start, end = await topics.store.offsets(part.shard)
                offset = p["offset"]
                if offset == -1:  # "up to the high watermark"
                    offset = end
                if offset < 0 or offset > end:
                    r["error_code"] = E.OFFSET_OUT_OF_RANGE
                    r["low_watermark"] = start
                    continue
                r["low_watermark"] = await topics.deleteRecordsBefore(part, offset)
            out.append({"name": t["name"], "partitions": presp})
        return {"throttle_time_ms": 0, "topics": out}

    async def handle_describe_log_dirs(self, req: Request) -> dict[str, Any]:
        """DescribeLogDirs (KIP-113): one directory, the store's, with each partition's size."""
        topics = self.node.topics
        wanted = req.body["topics"]
        if wanted is None:
            wanted = [
                {"topic": n, "partitions": list(range(t.partitions))}
                for n, t in sorted(topics.topics.items())
            ]
        result = []
        for t in wanted:
            if t["topic"] not in topics.topics:
                continue
            parts = []
            for idx in t["partitions"]:
                part = await topics.partition(t["topic"], idx)
                if part is None:
                    continue
                parts.append(
                    {
                        "partition_index": idx,
                        "partition_size": await topics.partitionSize(part),
                        "offset_lag": 0,
                        "is_future_key": False,
                    }
                )
            result.append({"name": t["topic"], "partitions": parts})
        logDir = C.staticBrokerValues(self.node)["log.dirs"]
        return {
            "throttle_time_ms": 0,
            "error_code": E.NONE,
            "results": [{"error_code": E.NONE, "log_dir": logDir, "topics": result}],
        }

    # -- leaders and reassignments (single node: nothing moves) ----------

    async def handle_elect_leaders(self, req: Request) -> dict[str, Any]:
        """ElectLeaders (KIP-183, KIP-460): the one replica already leads every partition.

        Kafka answers ELECTION_NOT_NEEDED for a partition whose preferred
        leader already leads; an unknown partition gets UNKNOWN_TOPIC_OR_PARTITION.
        """
        topics = self.node.topics
        wanted = req.body["topic_partitions"]
        if wanted is None:
            # "all partitions": Kafka lists only those where an election happened
            return {"throttle_time_ms": 0, "error_code": E.NONE, "replica_election_results": []}
        out = []
        for t in wanted:
            presp = []
            for idx in t["partition_id"]:
                part = await topics.partition(t["topic"], idx)
                if part is None:
                    presp.append(
                        {
                            "partition_id": idx,
                            "error_code": E.UNKNOWN_TOPIC_OR_PARTITION,
                            "error_message": "no such partition",
                        }
                    )
                else:
                    presp.append(
                        {
                            "partition_id": idx,
                            "error_code": E.ELECTION_NOT_NEEDED,
                            "error_message": "the preferred replica already leads",
                        }
                    )
            out.append({"topic": t["topic"], "partition_result": presp})
        return {"throttle_time_ms": 0, "error_code": E.NONE, "replica_election_results": out}

    async def handle_alter_partition_reassignments(self, req: Request) -> dict[str, Any]:
        """AlterPartitionReassignments (KIP-455): only this broker may hold a replica.

        Moving a partition to its current replica set succeeds at once (there
        is nothing to copy); any other broker id is refused with
        INVALID_REPLICA_ASSIGNMENT, cancelling (null replicas) with
        NO_REASSIGNMENT_IN_PROGRESS, as Kafka answers for those cases.
        """
        topics = self.node.topics
        bid = self.node.settings.broker_id
        out = []
        for t in req.body["topics"]:
            presp = []
            for p in t["partitions"]:
                r: dict[str, Any] = {
                    "partition_index": p["partition_index"],
                    "error_code": E.NONE,
                    "error_message": None,
                }
                part = await topics.partition(t["name"], p["partition_index"])
                replicas = p["replicas"]
                if part is None:
                    r["error_code"] = E.UNKNOWN_TOPIC_OR_PARTITION
                elif replicas is None:
                    r["error_code"] = E.NO_REASSIGNMENT_IN_PROGRESS
                elif replicas != [bid]:
                    r["error_code"] = E.INVALID_REPLICA_ASSIGNMENT
                    r["error_message"] = f"this cluster has one broker, {bid}"
                presp.append(r)
            out.append({"name": t["name"], "partitions": presp})
        return {
            "throttle_time_ms": 0,
            "error_code": E.NONE,
            "error_message": None,
            "responses": out,
        }

    async def handle_list_partition_reassignments(self, req: Request) -> dict[str, Any]:
        """ListPartitionReassignments (KIP-455): none is ever in progress."""
        return {"throttle_time_ms": 0, "error_code": E.NONE, "error_message": None, "topics": []}

    # -- SCRAM users (KIP-554) -------------------------------------------

    def _users(self) -> Any:
        security = getattr(self.node.broker, "security", None)
        return getattr(security, "users", None)

    async def handle_describe_user_scram_credentials(self, req: Request) -> dict[str, Any]:
        users = self._users()
        info = users.scramInfo() if users is not None else {}
        mech = {v: k for k, v in SCRAM_MECHANISMS.items()}
        wanted = req.body["users"]
        names = sorted(info) if not wanted else [u["name"] for u in wanted]
        results = []
        for name in names:
            got = info.get(name)
            if got is None:
                results.append(
                    {
                        "user": name,
                        "error_code": E.RESOURCE_NOT_FOUND,
                        "error_message": "Attempt to describe a user credential that does not exist",
                        "credential_infos": [],
                    }
                )
                continue
            results.append(
                {
                    "user": name,
                    "error_code": E.NONE,
                    "error_message": None,
                    "credential_infos": [
                        {"mechanism": mech[h], "iterations": n}
                        for h, n in sorted(got.items())
                        if h in mech
                    ],
                }
            )
        return {
            "throttle_time_ms": 0,
            "error_code": E.NONE,
            "error_message": None,
            "results": results,
        }

    async def handle_alter_user_scram_credentials(self, req: Request) -> dict[str, Any]:
        """Upsert or delete SCRAM keys in the user store (KIP-554).

        An upsertion carries the client's salt and salted password; the
        stored and server keys are derived from them (RFC 5802), the salted
        password itself is not kept.
        """
        users = self._users()
        b = req.body
        results: dict[str, tuple[int, str | None]] = {}
        for d in b["deletions"]:
            name = d["name"]
            hashName = SCRAM_MECHANISMS.get(d["mechanism"])
            if users is None:
                results[name] = (E.UNSUPPORTED_VERSION, "this node has no user store")
            elif hashName is None:
                results[name] = (E.UNSUPPORTED_SASL_MECHANISM, "unknown SCRAM mechanism")
            elif not users.deleteScram(name, hashName):
                results[name] = (
                    E.RESOURCE_NOT_FOUND,
                    "Attempt to delete a user credential that does not exist",
                )
            else:
                results.setdefault(name, (E.NONE, None))
        for u in b["upsertions"]:
            name = u["name"]
            hashName = SCRAM_MECHANISMS.get(u["mechanism"])
            if users is None:
                results[name] = (E.UNSUPPORTED_VERSION, "this node has no user store")
                continue
            if hashName is None:
                results[name] = (E.UNSUPPORTED_SASL_MECHANISM, "unknown SCRAM mechanism")
                continue
            if not MIN_ITERATIONS <= u["iterations"] <= MAX_ITERATIONS:
                results[name] = (
                    E.UNACCEPTABLE_CREDENTIAL,
                    f"iterations must be {MIN_ITERATIONS}..{MAX_ITERATIONS}",
                )
                continue
            salted = u["salted_password"]
            clientKey = hmac.new(salted, b"Client Key", hashName).digest()
            storedKey = hashlib.new(hashName, clientKey).digest()
            serverKey = hmac.new(salted, b"Server Key", hashName).digest()
            try:
                users.setScram(name, hashName, u["salt"], u["iterations"], storedKey, serverKey)
            except ValueError as e:
                results[name] = (E.UNACCEPTABLE_CREDENTIAL, str(e))
                continue
            results.setdefault(name, (E.NONE, None))
        return {
            "throttle_time_ms": 0,
            "results": [
                {"user": n, "error_code": c, "error_message": m} for n, (c, m) in results.items()
            ],
        }


def _configType(rtype: int) -> int:
    """librdkafka sends its GROUP resource type (3, as in ACLs) for group configs; Kafka's is 32."""
    return C.GROUP if rtype == 3 else rtype
