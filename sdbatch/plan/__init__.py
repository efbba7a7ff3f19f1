"""Planning, pure and deterministic: normalized rows to variant groups to shards; the planned file read by shard."""
