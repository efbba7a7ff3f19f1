"""Unit tests of sdbatch/render/models/."""
