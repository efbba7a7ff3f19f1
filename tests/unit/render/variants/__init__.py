"""Unit tests of sdbatch/render/variants/."""
