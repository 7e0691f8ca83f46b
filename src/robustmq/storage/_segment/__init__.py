"""Private building blocks of the C{segment} shard store (one concept per module)."""
