"""Unit tests of sdbatch/store/ that need no S3 server."""
