"""Unit tests of sdbatch/output/layouts/."""
