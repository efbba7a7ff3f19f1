"""Per-row LoRAs and ControlNets read from S3 (moto, SeaweedFS behind a fault proxy) by a renderer without Ray."""

import pytest

from sdbatch.settings import S3Settings
from sdbatch.tasks import ShardTask
from tests.support.variant_render import (
    NOISE,
    Renderers,
    max_diff,
    new_renderer,
    pixels_of,
    read_bytes,
    render_all,
    sha256_of,
    variant_row,
    write_variant_assets,
)

pytestmark = pytest.mark.usefixtures("tiny_cache")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return write_variant_assets(tmp_path_factory.mktemp("assets"))


@pytest.fixture
def fresh(tmp_path):
    """Makes new renderers (a fresh actor each) and closes them after the test."""
    made = Renderers(tmp_path)
    yield made
    made.close()


def test_s3_control_image_and_lora(moto_env, moto_server, fresh, assets, tiny_cache):
    client = moto_server.client()
    client.create_bucket(Bucket="inputs")
    client.put_object(Bucket="inputs", Key="pose/img1.png", Body=read_bytes(assets["img1"]))
    client.put_object(Bucket="inputs", Key="loras/a.safetensors", Body=read_bytes(assets["a"]))
    renderer = fresh(s3=S3Settings(endpoint_url=moto_env))
    local = variant_row(0, loras=[(assets["a"], 1.0)], controlnets=[(assets["cn1"], assets["img1"], 1.0)])
    remote = variant_row(1, loras=[("s3://inputs/loras/a.safetensors", 1.0)],
                         controlnets=[(assets["cn1"], "s3://inputs/pose/img1.png", 1.0)])
    out = render_all(renderer, local, remote)
    assert max_diff(pixels_of(out["r0"]), pixels_of(out["r1"])) <= NOISE
    assert out["r1"].controlnets_used[0]["image_sha256"] == sha256_of(assets["img1"])
    assert out["r1"].loras_used[0]["sha256"] == sha256_of(assets["a"])
    assert renderer.lora_loads == 1  # same content under two paths: one adapter
    assert len(list((tiny_cache / "loras").rglob("a.safetensors"))) == 1
    # Overwritten in place: the node's copy follows the object's ETag, so a new actor gets the new LoRA.
    client.put_object(Bucket="inputs", Key="loras/a.safetensors", Body=read_bytes(assets["b"]))
    again = render_all(fresh(s3=S3Settings(endpoint_url=moto_env)), remote)["r1"]
    assert again.loras_used[0]["sha256"] == sha256_of(assets["b"])


def test_an_input_s3_cannot_serve_for_now_fails_the_shard_for_a_retry_not_its_row(s3_env, new_bucket, assets,
                                                                                  tmp_path, tiny_cache):
    """Throttling that outlasts the client's retries may pass: the shard fails, so the dispatcher retries it
    (adopting what was written) instead of failing the row for good. A missing object still fails its row."""
    from sdbatch.errors import InputUnavailable
    from sdbatch.store import open_store
    from tests.support.faults import FaultProxy

    open_store(f"s3://{new_bucket}", S3Settings(endpoint_url=s3_env)).put("pose/img1.png", read_bytes(assets["img1"]))
    throttled = {"on": True}

    def rule(method: str, path: str, number: int) -> str | None:
        return "slowdown" if throttled["on"] and path.endswith("/pose/img1.png") else None

    rows = (variant_row(0), variant_row(1, controlnets=[(assets["cn1"], f"s3://{new_bucket}/pose/img1.png", 1.0)]),
            variant_row(2, controlnets=[(assets["cn1"], f"s3://{new_bucket}/pose/missing.png", 1.0)]))
    with FaultProxy(s3_env, rule) as proxy:
        renderer = new_renderer(tmp_path, s3=S3Settings(endpoint_url=proxy.endpoint, max_attempts=2))
        try:
            with pytest.raises(InputUnavailable, match=r"control image s3://.*/pose/img1.png: .*SlowDown"):
                renderer.render_shard(ShardTask("000000", "a1", rows, "png", 95))
            throttled["on"] = False
            result = renderer.render_shard(ShardTask("000000", "a2", rows, "png", 95))
        finally:
            renderer.close()
    assert proxy.log.counts["slowdown"] >= 2  # the client retried before giving up
    assert (result.committed, result.rows_ok, result.rows_failed) == (True, 2, 1)
    assert list(result.failures) == ["r2"] and "does not exist" in result.failures["r2"]


def test_embeddings_from_an_s3_folder_render_as_from_a_local_one(s3_env, new_bucket, tmp_path):
    import hashlib

    import torch
    from safetensors.torch import save_file

    from sdbatch.render.renderer import Renderer
    from sdbatch.settings import RendererSettings
    from sdbatch.store import open_store
    from sdbatch.store.local import LocalStore

    local = tmp_path / "embeddings"
    local.mkdir()
    save_file({"emb_params": torch.randn(2, 32, generator=torch.Generator().manual_seed(3))},
              local / "fuzzyfox.safetensors")
    data = (local / "fuzzyfox.safetensors").read_bytes()
    s3 = S3Settings(endpoint_url=s3_env)
    open_store(f"s3://{new_bucket}/embeddings", s3).put("fuzzyfox.safetensors", data)
    rows = [variant_row(0, prompt="a photo of fuzzyfox"), variant_row(1, prompt="a photo of a fox")]
    out = {}
    for name, folder in (("local", str(local)), ("s3", f"s3://{new_bucket}/embeddings")):
        renderer = Renderer(LocalStore(str(tmp_path / name)),
                            RendererSettings(batch_size=4, io_threads=1, cpu_threads=2, s3=s3, embedding_dir=folder))
        try:
            out[name] = render_all(renderer, *rows)
        finally:
            renderer.close()
    assert max_diff(pixels_of(out["local"]["r0"]), pixels_of(out["s3"]["r0"])) <= NOISE
    assert out["s3"]["r0"].embeddings_used == [{"name": "fuzzyfox", "sha256": hashlib.sha256(data).hexdigest()}]
    assert out["s3"]["r1"].embeddings_used == []
