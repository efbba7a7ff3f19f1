"""Test helpers, no tests: S3 servers, Ray clusters, fault injection, CLI runs, deploy paths, offline model files."""
