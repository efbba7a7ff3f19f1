"""Fixtures for every kind of test (offline_hub, tiny_cache) and the skip of `gpu` tests (markers: pyproject.toml)."""

from __future__ import annotations

import pytest


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


@pytest.fixture(scope="session", autouse=True)
def offline_hub():
    """No test reaches the hub (this machine has no internet; a driver would wait for it): offline everywhere,
    subprocesses and Ray workers included. Tests of hub lookups set what they need themselves."""
    import os

    import huggingface_hub.constants  # it reads the variable once, when first imported

    saved = os.environ.get("HF_HUB_OFFLINE"), huggingface_hub.constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"], huggingface_hub.constants.HF_HUB_OFFLINE = "1", True
    yield
    if saved[0] is None:
        os.environ.pop("HF_HUB_OFFLINE", None)
    else:
        os.environ["HF_HUB_OFFLINE"] = saved[0]
    huggingface_hub.constants.HF_HUB_OFFLINE = saved[1]


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
