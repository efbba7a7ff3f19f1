"""Unit tests of sdbatch/engine/ that need no Ray."""
