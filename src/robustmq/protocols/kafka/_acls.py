"""Kafka access control on the wire: refusing unauthenticated requests, and the ACL admin APIs.

The decisions themselves are made in L{robustmq.core.security.kafkaacl};
this module turns them into Kafka responses:

- L{refusal}: the answer to a request that arrives before the connection
  authenticated, when it may not stay anonymous: the request's own error
  fields carry C{SASL_AUTHENTICATION_FAILED} (or C{ILLEGAL_SASL_STATE}
  where the client is mid-handshake); the connection is closed after it.
- L{describeAcls}, L{createAcls}, L{deleteAcls}: DescribeAcls (29),
  CreateAcls (30) and DeleteAcls (31) over the node's binding store, as
  Kafka's AdminClient calls them (KIP-140, KIP-290 for prefixed patterns).
  Describing needs DESCRIBE on the cluster, changing needs ALTER, as in
  Kafka; otherwise CLUSTER_AUTHORIZATION_FAILED.
"""

from __future__ import annotations

from typing import Any

from robustmq.core.security.kafkaacl import (
    ALTER,
    DESCRIBE,
    AclBinding,
    AclFilter,
    KafkaAccess,
    KafkaACL,
    KafkaAclError,
)
from robustmq.protocols.kafka import _errors as E
from robustmq.protocols.kafka._codec import Request
from robustmq.protocols.kafka._schema import API_KEYS, _versions, _within

__all__ = ["createAcls", "deleteAcls", "describeAcls", "refusal"]


def _hasTopError(apiKey: int, version: int) -> bool:
    schema = API_KEYS[apiKey][1]
    return any(
        f["name"] == "ErrorCode" and _within(version, _versions(f.get("versions")))
        for f in schema.fields
    )


def refusal(req: Request, code: int, message: str) -> dict[str, Any] | None:
    """A response to C{req} whose error fields all carry C{code}, or None when it has none."""
    b = req.body
    key = req.apiKey
    if key == 3:  # Metadata: every asked topic refused, no topics listed otherwise
        names = [t.get("name") for t in (b.get("topics") or [])]
        return {
            "brokers": [],
            "cluster_id": None,
            "controller_id": -1,
            "topics": [{"error_code": code, "name": n, "partitions": []} for n in names],
        }
    if key == 0:  # Produce
        if b.get("acks") == 0:
            return None
        return {
            "responses": [
                {
                    "name": t["name"],
                    "partition_responses": [
                        {"index": p["index"], "error_code": code, "base_offset": -1}
                        for p in t["partition_data"]
                    ],
                }
                for t in b["topic_data"]
            ],
            "throttle_time_ms": 0,
        }
    if key == 2:  # ListOffsets
        return {
            "throttle_time_ms": 0,
            "topics": [
                {
                    "name": t["name"],
                    "partitions": [
                        {"partition_index": p["partition_index"], "error_code": code}
                        for p in t["partitions"]
                    ],
                }
                for t in b["topics"]
            ],
        }
    if key == 10 and req.apiVersion >= 4:  # FindCoordinator (batched)
        return {
            "throttle_time_ms": 0,
            "coordinators": [
                {
                    "key": k,
                    "node_id": -1,
                    "host": "",
                    "port": -1,
                    "error_code": code,
                    "error_message": message,
                }
                for k in b["coordinator_keys"]
            ],
        }
    if key == 19:  # CreateTopics
        return {
            "throttle_time_ms": 0,
            "topics": [
                {"name": t["name"], "error_code": code, "error_message": message}
                for t in b["topics"]
            ],
        }
    if key == 51:  # AlterUserScramCredentials: one result per user named
        users = [d["name"] for d in b.get("deletions", [])]
        users += [u["name"] for u in b.get("upsertions", []) if u["name"] not in users]
        return {
            "throttle_time_ms": 0,
            "results": [{"user": u, "error_code": code, "error_message": message} for u in users],
        }
    if _hasTopError(key, req.apiVersion):
        return {"error_code": code, "error_message": message, "throttle_time_ms": 0}
    return None


# -- the ACL admin APIs -------------------------------------------------


def _filter(raw: dict[str, Any], version: int) -> AclFilter:
    return AclFilter.create(
        raw["resource_type_filter"],
        raw["resource_name_filter"],
        raw.get("pattern_type_filter", 3) if version >= 1 else 3,
        raw["principal_filter"],
        raw["host_filter"],
        raw["operation"],
        raw["permission_type"],
    )


def describeAcls(acl: KafkaACL, access: KafkaAccess, req: Request) -> dict[str, Any]:
    """DescribeAcls: the bindings passing the filter, grouped by resource pattern."""
    out: dict[str, Any] = {
        "throttle_time_ms": 0,
        "error_code": E.NONE,
        "error_message": None,
        "resources": [],
    }
    if not access.cluster(DESCRIBE):
        out.update(
            error_code=E.CLUSTER_AUTHORIZATION_FAILED, error_message="Cluster authorization failed."
        )
        return out
    try:
        flt = _filter(req.body, req.apiVersion)
    except KafkaAclError as e:
        out.update(error_code=E.INVALID_REQUEST, error_message=str(e))
        return out
    grouped: dict[tuple[int, str, int], list[AclBinding]] = {}
    for b in acl.describe(flt):
        grouped.setdefault((b.resourceType, b.resourceName, b.patternType), []).append(b)
    out["resources"] = [
        {
            "resource_type": rt,
            "resource_name": name,
            "pattern_type": pt,
            "acls": [
                {
                    "principal": b.principal,
                    "host": b.host,
                    "operation": b.operation,
                    "permission_type": b.permission,
                }
                for b in bindings
            ],
        }
        for (rt, name, pt), bindings in grouped.items()
    ]
    return out


def createAcls(acl: KafkaACL, access: KafkaAccess, req: Request) -> dict[str, Any]:
    """CreateAcls: one result per creation, in order."""
    allowed = access.cluster(ALTER)
    results = []
    for c in req.body["creations"]:
        if not allowed:
            results.append(
                {
                    "error_code": E.CLUSTER_AUTHORIZATION_FAILED,
                    "error_message": "Cluster authorization failed.",
                }
            )
            continue
        try:
            binding = AclBinding.create(
                c["resource_type"],
                c["resource_name"],
                c.get("resource_pattern_type", 3) if req.apiVersion >= 1 else 3,
                c["principal"],
                c["host"],
                c["operation"],
                c["permission_type"],
            )
            acl.create(binding)
        except KafkaAclError as e:
            results.append({"error_code": E.INVALID_REQUEST, "error_message": str(e)})
            continue
        results.append({"error_code": E.NONE, "error_message": None})
    return {"throttle_time_ms": 0, "results": results}


def deleteAcls(acl: KafkaACL, access: KafkaAccess, req: Request) -> dict[str, Any]:
    """DeleteAcls: per filter, the bindings it removed."""
    allowed = access.cluster(ALTER)
    results = []
    for raw in req.body["filters"]:
        r: dict[str, Any] = {"error_code": E.NONE, "error_message": None, "matching_acls": []}
        results.append(r)
        if not allowed:
            r.update(
                error_code=E.CLUSTER_AUTHORIZATION_FAILED,
                error_message="Cluster authorization failed.",
            )
            continue
        try:
            flt = _filter(raw, req.apiVersion)
        except KafkaAclError as e:
            r.update(error_code=E.INVALID_REQUEST, error_message=str(e))
            continue
        r["matching_acls"] = [
            {
                "error_code": E.NONE,
                "error_message": None,
                "resource_type": b.resourceType,
                "resource_name": b.resourceName,
                "pattern_type": b.patternType,
                "principal": b.principal,
                "host": b.host,
                "operation": b.operation,
                "permission_type": b.permission,
            }
            for b in acl.delete(flt)
        ]
    return {"throttle_time_ms": 0, "filter_results": results}
