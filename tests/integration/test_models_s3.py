"""s3:// model sources on SeaweedFS: fetched once per node, followed by their ETags, streamed to disk in parts."""

import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest

from sdbatch.render.renderer import Renderer
from sdbatch.settings import RendererSettings, S3Settings
from sdbatch.store import open_store
from sdbatch.store.local import LocalStore
from tests.support.model_files import model_row, write_models

pytestmark = pytest.mark.usefixtures("tiny_cache")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny SD1.5-style folder (seed 1, so not tiny:sd15's weights), the same as a single file, a tiny VAE."""
    return write_models(tmp_path_factory.mktemp("models"))


def _fetch(uri: str, endpoint: str, cache: str) -> bool:
    os.environ["SDBATCH_CACHE"] = cache
    from sdbatch.render.models.sources import fetch_copy

    return fetch_copy(uri, S3Settings(endpoint_url=endpoint))[1]


def test_s3_model_is_downloaded_once_per_node_and_renders(models, s3_env, new_bucket, tmp_path, monkeypatch):
    store = open_store(f"s3://{new_bucket}/models", S3Settings(endpoint_url=s3_env))
    for file in sorted(p for p in models["folder"].rglob("*") if p.is_file()):
        store.put(f"seed1/{file.relative_to(models['folder']).as_posix()}", file.read_bytes())
    store.put("seed1.safetensors", models["single"].read_bytes())
    store.put("seed1/unet/diffusion_pytorch_model.bin", b"a pickled twin of the .safetensors weights")
    uri = f"s3://{new_bucket}/models/seed1"
    node = str(tmp_path / "node-cache")  # a fresh node: nothing cached yet
    with multiprocessing.get_context("spawn").Pool(4) as pool:  # four actors of one node race for the lock
        downloaded = pool.starmap(_fetch, [(uri, s3_env, node)] * 4)
    assert sorted(downloaded) == [False, False, False, True]
    assert not list(Path(node).rglob("*.bin")) and not list(Path(node).rglob("*.tmp"))  # no twin, no staging left
    monkeypatch.setenv("SDBATCH_CACHE", node)  # this test only: later tests find their caches where they were
    settings = RendererSettings(cpu_threads=2, io_threads=1, s3=S3Settings(endpoint_url=s3_env))
    r = Renderer(LocalStore(str(tmp_path / "out")), settings)
    try:  # the local folder, the s3:// folder, the s3:// single file: the same weights, the same image
        rows = [model_row(0, model=str(models["folder"])), model_row(1, model=uri),
                model_row(2, model=f"{uri}.safetensors")]
        out = [np.asarray(o.image, np.int16) for o in r.render_rows(rows)]
        assert len(out) == 3 and np.abs(out[1] - out[0]).max() <= 1 and np.abs(out[2] - out[0]).max() <= 1
        assert r.model_loads == 3
    finally:
        r.close()


def test_a_missing_s3_model_fails_with_the_uri_in_the_message(s3_env, new_bucket):
    from sdbatch.errors import ModelLoadError
    from sdbatch.render.models.sources import fetch_copy

    with pytest.raises(ModelLoadError, match=f"s3://{new_bucket}/nothing.*no objects under that prefix"):
        fetch_copy(f"s3://{new_bucket}/nothing", S3Settings(endpoint_url=s3_env))


def test_an_s3_model_overwritten_in_place_is_fetched_again_and_the_old_copy_dropped(s3_env, new_bucket, tmp_path,
                                                                                   monkeypatch):
    """The node cache follows the bucket's content (ETags), not the URI: a new upload under the same key
    is not served stale, and the superseded copy does not stay on the node's disk."""
    from sdbatch.render.models.sources import fetch_copy

    monkeypatch.setenv("SDBATCH_CACHE", str(tmp_path / "node"))
    settings = S3Settings(endpoint_url=s3_env)
    bucket = open_store(f"s3://{new_bucket}", settings)
    uri = f"s3://{new_bucket}/models/m.safetensors"
    bucket.put("models/m.safetensors", b"version one")
    bucket.put("models/m.safetensors.bak", b"a neighbour the single file's listing must not pick up")
    first, downloaded = fetch_copy(uri, settings)
    assert downloaded and first.read_bytes() == b"version one"
    assert fetch_copy(uri, settings) == (first, False)  # unchanged: served from the node

    bucket.put("models/m.safetensors", b"version two, overwritten in place")
    second, downloaded = fetch_copy(uri, settings)
    assert downloaded and second != first and second.read_bytes() == b"version two, overwritten in place"
    assert not first.exists() and fetch_copy(uri, settings) == (second, False)


def test_an_s3_model_file_streams_to_disk_in_parts_without_being_held_in_memory(s3_env, new_bucket, tmp_path,
                                                                                 monkeypatch):
    """A multi-GB checkpoint must not be read into memory whole: 80 MiB here, above the 64 MiB part size,
    so it also comes down as ranged GETs (pinned to one ETag), which the S3 server must accept."""
    import hashlib
    import tracemalloc

    from sdbatch.render.models.sources import fetch_copy

    monkeypatch.setenv("SDBATCH_CACHE", str(tmp_path / "node"))
    settings = S3Settings(endpoint_url=s3_env)
    payload = os.urandom(80 << 20)
    open_store(f"s3://{new_bucket}", settings).put("big.safetensors", payload)
    digest = hashlib.sha256(payload).hexdigest()
    del payload
    tracemalloc.start()
    try:
        path, downloaded = fetch_copy(f"s3://{new_bucket}/big.safetensors", settings)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert downloaded and hashlib.sha256(path.read_bytes()).hexdigest() == digest
    # s3transfer holds at most its IO queue (100 chunks of 256 KiB) and a chunk per thread while the disk writer
    # catches up, more of it on a busy machine: bounded, and far from the file held whole.
    assert peak < (48 << 20), f"{peak / 2**20:.0f} MiB held in Python while downloading 80 MiB"
