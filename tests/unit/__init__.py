"""Fast tests without Ray or S3 servers, laid out like the sdbatch package."""
