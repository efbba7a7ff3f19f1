"""Model sources and VAE overrides: single-file checkpoints, s3:// models fetched once per node, per-row VAEs."""

import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from sdbatch.render.models.loading import load_model
from sdbatch.render.renderer import Renderer
from sdbatch.settings import RendererSettings, S3Settings
from sdbatch.store import open_store
from sdbatch.store.local import LocalStore

pytestmark = pytest.mark.usefixtures("tiny_cache")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny SD1.5-style folder (seed 1, so not tiny:sd15's weights), the same as a single file, a tiny VAE."""
    from diffusers import AutoencoderKL

    from sdbatch.render.tiny.build import write_tiny_model
    from sdbatch.render.tiny.sd15 import vae_config
    from tests.support.checkpoints import write_single_file

    root = tmp_path_factory.mktemp("models")
    folder = write_tiny_model(root / "seed1", seed=1)
    # Its configs come from tiny:sd15 (seed 0) with the weights left out, so every weight is the file's.
    single = write_single_file(folder, root / "seed1.safetensors", config="tiny:sd15")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(9)
        AutoencoderKL(**vae_config()).save_pretrained(root / "vae")
    return {"folder": folder, "single": single, "vae": root / "vae"}


def _render(pipe) -> np.ndarray:
    out = pipe(prompt=["a red cube"], num_inference_steps=2, output_type="np",
               generator=[torch.Generator().manual_seed(0)])
    return out.images


def _row(i, model="tiny:sd15", vae=None) -> dict:
    return {"id": f"r{i}", "prompt": "a red cube", "negative_prompt": "", "seed": 3, "model": model, "vae": vae,
            "width": None, "height": None, "steps": 2, "scheduler": None, "guidance_scale": 5.0,
            "loras": [], "controlnets": []}


def test_single_file_checkpoint_renders_as_its_folder(models):
    folder = load_model(str(models["folder"]), CPU, torch.float32)
    single = load_model(str(models["single"]), CPU, torch.float32)
    assert type(single.pipeline).__name__ == "StableDiffusionPipeline" and single.native_size == (64, 64)
    image = _render(single.pipeline)
    assert np.abs(image - _render(folder.pipeline)).max() < 1e-5
    assert np.abs(image - _render(load_model("tiny:sd15", CPU, torch.float32).pipeline)).max() > 0.05


def _fetch(uri: str, endpoint: str, cache: str) -> bool:
    os.environ["SDBATCH_CACHE"] = cache
    from sdbatch.render.models.sources import fetch_s3

    return fetch_s3(uri, S3Settings(endpoint_url=endpoint))[1]


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
        rows = [_row(0, model=str(models["folder"])), _row(1, model=uri), _row(2, model=f"{uri}.safetensors")]
        out = [np.asarray(o.image, np.int16) for o in r.render_rows(rows)]
        assert len(out) == 3 and np.abs(out[1] - out[0]).max() <= 1 and np.abs(out[2] - out[0]).max() <= 1
        assert r.model_loads == 3
    finally:
        r.close()


def test_a_missing_s3_model_fails_with_the_uri_in_the_message(s3_env, new_bucket):
    from sdbatch.errors import ModelLoadError
    from sdbatch.render.models.sources import fetch_s3

    with pytest.raises(ModelLoadError, match=f"s3://{new_bucket}/nothing.*no objects under that prefix"):
        fetch_s3(f"s3://{new_bucket}/nothing", S3Settings(endpoint_url=s3_env))


def test_an_s3_model_overwritten_in_place_is_fetched_again_and_the_old_copy_dropped(s3_env, new_bucket, tmp_path,
                                                                                   monkeypatch):
    """The node cache follows the bucket's content (ETags), not the URI: a new upload under the same key
    is not served stale, and the superseded copy does not stay on the node's disk."""
    from sdbatch.render.models.sources import fetch_s3

    monkeypatch.setenv("SDBATCH_CACHE", str(tmp_path / "node"))
    settings = S3Settings(endpoint_url=s3_env)
    bucket = open_store(f"s3://{new_bucket}", settings)
    uri = f"s3://{new_bucket}/models/m.safetensors"
    bucket.put("models/m.safetensors", b"version one")
    bucket.put("models/m.safetensors.bak", b"a neighbour the single file's listing must not pick up")
    first, downloaded = fetch_s3(uri, settings)
    assert downloaded and first.read_bytes() == b"version one"
    assert fetch_s3(uri, settings) == (first, False)  # unchanged: served from the node

    bucket.put("models/m.safetensors", b"version two, overwritten in place")
    second, downloaded = fetch_s3(uri, settings)
    assert downloaded and second != first and second.read_bytes() == b"version two, overwritten in place"
    assert not first.exists() and fetch_s3(uri, settings) == (second, False)


def test_an_s3_model_file_streams_to_disk_in_parts_without_being_held_in_memory(s3_env, new_bucket, tmp_path,
                                                                                 monkeypatch):
    """A multi-GB checkpoint must not be read into memory whole: 80 MiB here, above the 64 MiB part size,
    so it also comes down as ranged GETs (pinned to one ETag), which the S3 server must accept."""
    import hashlib
    import tracemalloc

    from sdbatch.render.models.sources import fetch_s3

    monkeypatch.setenv("SDBATCH_CACHE", str(tmp_path / "node"))
    settings = S3Settings(endpoint_url=s3_env)
    payload = os.urandom(80 << 20)
    open_store(f"s3://{new_bucket}", settings).put("big.safetensors", payload)
    digest = hashlib.sha256(payload).hexdigest()
    del payload
    tracemalloc.start()
    try:
        path, downloaded = fetch_s3(f"s3://{new_bucket}/big.safetensors", settings)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert downloaded and hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert peak < (32 << 20), f"{peak / 2**20:.0f} MiB held in Python while downloading 80 MiB"


def test_vae_override_changes_the_image_and_rows_without_it_keep_the_models_own(models, tmp_path):
    r = Renderer(LocalStore(str(tmp_path)), RendererSettings(cpu_threads=2, io_threads=1))
    try:
        rows = [_row(0), _row(1, vae=str(models["vae"])), _row(2), _row(3, vae=str(tmp_path / "no-vae"))]
        out = {o.row["id"]: o for o in r.render_rows(rows)}
        px = {k: np.asarray(o.image, np.int16) for k, o in out.items() if o.error is None}
        assert np.abs(px["r1"] - px["r0"]).max() > 8
        assert np.abs(px["r2"] - px["r0"]).max() <= 1  # the model's own VAE is back
        assert "VAE" in out["r3"].error and "does not exist" in out["r3"].error
        assert r.resident()["vaes"] == [str(models["vae"])]
        assert out["r1"].vae_hash and out["r0"].vae_hash is None  # recorded per image as results' vae_hash
    finally:
        r.close()


def test_local_references_are_checked_before_any_actor_starts(models, tmp_path):
    import pyarrow as pa

    from sdbatch.errors import ManifestError
    from sdbatch.manifest import check_local_references

    (tmp_path / "old.ckpt").write_bytes(b"pickle")
    ok = pa.table({"model": [str(models["single"]), str(models["folder"]), "tiny:sdxl", "org/name"],
                   "vae": [str(models["vae"]), None, None, None]})
    check_local_references(ok)
    for column, value, message in (("model", str(tmp_path / "gone.safetensors"), "does not exist"),
                                   ("model", str(tmp_path / "old.ckpt"), "convert it to .safetensors"),
                                   ("vae", str(tmp_path / "no-vae"), "does not exist"),
                                   ("model", str(tmp_path), "not a diffusers folder")):
        with pytest.raises(ManifestError, match=message) as info:
            check_local_references(pa.table({column: [value]}))
        assert f"column '{column}'" in str(info.value)


def test_submit_takes_a_single_file_model_and_refuses_a_missing_one_before_ray(models, tmp_path):
    from sdbatch.driver import SubmitRequest, prepare
    from sdbatch.errors import ManifestError
    from sdbatch.spec import load_spec
    from tests.util import write_manifest

    manifest = write_manifest(tmp_path / "m.parquet", [{"id": "a", "prompt": "a cube"}])
    single = load_spec(None, {"defaults.model": str(models["single"]), "defaults.vae": str(models["vae"])})
    assert prepare(SubmitRequest(str(manifest), str(tmp_path / "out"), single)).plan.rows_total == 1
    missing = load_spec(None, {"defaults.model": str(tmp_path / "gone.safetensors")})
    with pytest.raises(ManifestError, match="does not exist"):
        prepare(SubmitRequest(str(manifest), str(tmp_path / "out2"), missing))
    assert not (tmp_path / "out2").exists()
