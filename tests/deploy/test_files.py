"""The deployment files as a whole (cluster/, infra/): all there, and no credentials in any of them."""

from __future__ import annotations

import re

from tests.support.deploy import CLUSTER, INFRA, KUBE_MANIFESTS, LAUNCHER_CONFIGS


def test_the_files_are_there():
    assert [p.name for p in LAUNCHER_CONFIGS] and [p.name for p in KUBE_MANIFESTS]
    for name in ("Dockerfile", "compose.yaml", ".env.example", "bucket/lifecycle.json", "bucket/policy.json"):
        assert (INFRA / name).is_file(), name


def test_no_credentials_in_deployment_files():
    patterns = [re.compile(p) for p in (r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
                                        r"(?i)aws_secret_access_key\s*[:=]\s*['\"]?[A-Za-z0-9/+]{40}\b")]
    for path in [*CLUSTER.rglob("*"), *INFRA.rglob("*")]:
        if path.is_file():
            text = path.read_text(errors="replace")
            assert not [p.pattern for p in patterns if p.search(text)], path
