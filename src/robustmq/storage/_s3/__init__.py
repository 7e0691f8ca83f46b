"""Private pieces of the C{s3} shard store (client, object layout, cache)."""
