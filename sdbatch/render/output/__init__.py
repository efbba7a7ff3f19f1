"""One shard's output: result rows, image encoding, bounded uploads and the per-layout write-out and commit."""
