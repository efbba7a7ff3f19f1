"""The S3 servers integration tests run against (SeaweedFS, moto); their logic lives in tests/support/servers.py."""

from __future__ import annotations

import pytest

from tests.support.servers import MotoServer, SeaweedServer, apply_aws_env


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
