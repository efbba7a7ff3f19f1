"""The test suite: unit/ (no Ray, no servers), integration/ (real Ray, S3 servers), deploy/ (deployment files)."""
