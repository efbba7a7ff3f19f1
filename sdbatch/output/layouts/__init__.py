"""Output layouts: how a shard's images are written, adopted and found again."""
