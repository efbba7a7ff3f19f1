"""Shared pytest fixtures and markers; server logic lives in tests/servers.py."""

from __future__ import annotations

import pytest

try:
    from servers import MotoServer, SeaweedServer, apply_aws_env
except ImportError:  # tests/ imported as a package (e.g. --import-mode=importlib)
    from tests.servers import MotoServer, SeaweedServer, apply_aws_env


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; skipped when torch.cuda is unavailable")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return  # importing torch costs seconds; only pay it when a GPU test was selected
    try:
        import torch

        reason = None if torch.cuda.is_available() else "torch.cuda is not available"
    except ImportError:
        reason = "torch is not installed"
    if reason:
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    """A running SeaweedFS with S3 at .endpoint; credentials in .env."""
    with SeaweedServer(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


@pytest.fixture
def s3_env(seaweed, monkeypatch) -> str:
    """Default AWS chain pointed at seaweed's credentials; returns its endpoint."""
    apply_aws_env(monkeypatch, seaweed.env)
    return seaweed.endpoint


@pytest.fixture
def new_bucket(seaweed) -> str:
    """A fresh, empty bucket in seaweed."""
    return seaweed.create_bucket()


@pytest.fixture(scope="session")
def moto_server():
    """moto's S3 server (accepts any credentials) at .endpoint; .env as for seaweed."""
    with MotoServer() as server:
        yield server


@pytest.fixture
def moto_env(moto_server, monkeypatch) -> str:
    """Default AWS chain pointed at moto; returns its endpoint."""
    apply_aws_env(monkeypatch, moto_server.env)
    return moto_server.endpoint


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    """SDBATCH_CACHE for this session (inherited by CLI subprocesses and Ray workers), offline,
    with the tiny model built once up front so parallel actors find it ready."""
    import os

    cache = tmp_path_factory.mktemp("sdbatch-cache")
    saved = {k: os.environ.get(k) for k in ("SDBATCH_CACHE", "HF_HUB_OFFLINE")}
    os.environ.update(SDBATCH_CACHE=str(cache), HF_HUB_OFFLINE="1")
    from sdbatch.render.models.sources import resolve_source

    resolve_source("tiny:sd15")
    yield cache
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
