"""Tests that start a real local Ray, a multi-node Ray, SeaweedFS or moto, or run `sdbatch submit` end to end."""
