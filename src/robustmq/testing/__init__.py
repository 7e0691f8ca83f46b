"""Test helpers for RobustMQ and its plugin authors.

- L{robustmq.testing.process.BrokerProcess}: a real broker in a subprocess on loopback.
- L{robustmq.testing.memory.InMemoryBroker}: a broker in this process, for trial tests.
- L{robustmq.testing.storage_contract}: the IShardStore contract suite.
"""
