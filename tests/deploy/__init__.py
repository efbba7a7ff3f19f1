"""Deployment files (cluster/, infra/) checked offline against what their tools would accept."""
