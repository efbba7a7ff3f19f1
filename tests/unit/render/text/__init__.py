"""Unit tests of sdbatch/render/text/."""
