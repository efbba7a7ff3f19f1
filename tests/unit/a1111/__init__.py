"""Unit tests of sdbatch/a1111/."""
