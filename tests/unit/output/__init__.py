"""Unit tests of sdbatch/output/: the output protocol over local stores, without torch or Ray."""
