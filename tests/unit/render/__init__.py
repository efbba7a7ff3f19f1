"""Unit tests of sdbatch/render/: real tiny models rendered in-process on the CPU, without Ray."""
