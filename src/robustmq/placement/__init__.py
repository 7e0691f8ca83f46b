"""The placement center: cluster metadata and scheduling.

Not built yet: a single node keeps its metadata in the broker process.  The
Perspective Broker service and its embedded/etcd backends land with the
cluster work (see docs/architecture.md).
"""
