"""Shared by the deploy-config tests: where the deployment files are, and small YAML helpers."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import yaml

from tests.support.util import REPO

CLUSTER = REPO / "cluster"
INFRA = REPO / "infra"
# The CRDs come from ../shared beside the checkout (read at test time, never copied); absent, their checks skip.
KUBERAY_SCHEMAS = REPO.parent / "shared" / "schemas" / "kuberay"

LAUNCHER_CONFIGS = sorted(CLUSTER.glob("*.yaml"))
KUBE_MANIFESTS = sorted((CLUSTER / "kuberay").glob("*.yaml"))
READMES = [REPO / "README.md", CLUSTER / "README.md", INFRA / "README.md"]
IMAGE = "ghcr.io/YOUR_ORG/sdbatch-worker:latest"
IMAGE_ROOT = "/opt/sdbatch/"  # where infra/Dockerfile puts the repo's files
SECRET_NAME = re.compile(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY|CREDENTIAL)", re.IGNORECASE)


def load_yaml(path: Path):
    return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def renamed(doc, path: list, old: str, new: str):
    """A deep copy of doc with key `old` renamed to `new` in the mapping at `path`."""
    doc = copy.deepcopy(doc)
    node = doc
    for step in path:
        node = node[step]
    assert old in node, f"{old} not at {path}: the test's mutation is stale"
    node[new] = node.pop(old)
    return doc


def ids(paths):
    return [str(p.relative_to(REPO)) for p in paths]


def kube_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]
