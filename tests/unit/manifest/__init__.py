"""Unit tests of sdbatch/manifest/."""
