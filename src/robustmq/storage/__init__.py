"""Shard stores: the IShardStore adapters (memory, segment)."""
