"""Unit tests of sdbatch/run/ that need no Ray."""
