"""Models: a reference to local files (sources), to a warm pipeline (loading), and its fast path (fastpath)."""
