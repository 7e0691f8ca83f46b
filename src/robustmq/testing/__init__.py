"""Test helpers for RobustMQ and its plugin authors.

- L{robustmq.testing.process.BrokerProcess}: a real broker in a subprocess on loopback.
- L{robustmq.testing.cluster.LocalCluster}: etcd, placement nodes and brokers as real processes.
- L{robustmq.testing.etcd.EtcdProcess}: a real etcd on free loopback ports.
- L{robustmq.testing.memory.InMemoryBroker}: a broker in this process, for trial tests.
- L{robustmq.testing.storage_contract}: the IShardStore contract suite.
"""
