"""The package version: one home, read by the packaging metadata and recorded with every output."""

__version__ = "0.2.0"
