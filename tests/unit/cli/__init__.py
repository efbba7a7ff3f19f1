"""Unit tests of sdbatch/cli/: the CLI run where it needs no Ray or S3 server."""
