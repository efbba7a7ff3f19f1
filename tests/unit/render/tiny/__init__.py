"""Unit tests of sdbatch/render/tiny/."""
