"""Operations: HTTP admin API, Prometheus metrics, health checks and the web dashboard.

L{AdminService} is added to the node by L{robustmq.service.makeService} when
C{[http] enabled} is set; docs/operations.md describes every endpoint.
"""

from robustmq.admin._api import AdminAPI
from robustmq.admin._http import AdminResource, APIError, Authenticator, Route
from robustmq.admin._metrics import Metrics
from robustmq.admin._node import NodeAdminAPI, NodeAdminService
from robustmq.admin._service import AdminService

__all__ = [
    "APIError",
    "AdminAPI",
    "AdminResource",
    "AdminService",
    "Authenticator",
    "Metrics",
    "NodeAdminAPI",
    "NodeAdminService",
    "Route",
]
