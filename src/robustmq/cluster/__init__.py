"""The broker cluster: routes, forwarding, session hand-over and replication between brokers.

See docs/cluster.md.  L{ClusterNode} is the entry point; a broker joins a
cluster when C{[cluster] enabled} is true.
"""
