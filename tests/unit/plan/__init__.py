"""Unit tests of sdbatch/plan/."""
