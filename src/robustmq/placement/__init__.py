"""The placement center: cluster metadata and scheduling over Perspective Broker.

Modules, one concept each:

- L{records}: the C{pb.Copyable} records that cross PB (nodes, sessions,
  routes, shards, config, group offsets) and their JSON storage form;
- L{kv}, L{election}: backend values, watches, and leader election over
  compare-and-set;
- L{embedded}, L{etcd}: the two L{robustmq.interfaces.IPlacementBackend}s;
- L{center}: what the leader placement node does (liveness, pushes, shard
  leadership);
- L{server}: the PB service behind twisted.cred (L{makePlacementService});
- L{client}: a broker's reconnecting L{PlacementClient}.

The single-node default does not start any of this yet; see docs/cluster.md.
"""
