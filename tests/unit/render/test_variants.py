"""Per-row LoRAs and ControlNets on the warm pipeline: effect, formats, order independence, failures, caches, S3."""

import hashlib
import io

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from sdbatch.render.renderer import Renderer
from sdbatch.render.variants.fetch import Fetcher
from sdbatch.render.variants.loras import StateDictCache, parse_lora
from sdbatch.settings import RendererSettings, S3Settings, VariantSettings
from sdbatch.store.local import LocalStore
from sdbatch.tasks import ShardTask
from tests.support.tiny_variants import (
    convert_lora_to_kohya,
    write_tiny_controlnet,
    write_tiny_lora,
)

pytestmark = pytest.mark.usefixtures("tiny_cache")

NOISE = 1  # 1/255: float noise between batch shapes on CPU
CHANGED = 10  # a variant that matters moves some pixel by far more than noise


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    files = {name: write_tiny_lora(root / f"{name}.safetensors", seed)
             for name, seed in (("a", 1), ("b", 2), ("c", 3))}
    files["a_unet"] = write_tiny_lora(root / "a_unet.safetensors", 1, text_encoder=False)
    files["text_only"] = write_tiny_lora(root / "text_only.safetensors", 4, unet=False)
    files["a_kohya"] = convert_lora_to_kohya(files["a"], root / "a_kohya.safetensors")
    files["corrupt"] = root / "corrupt.safetensors"
    files["corrupt"].write_bytes(b"\x00garbage, not a safetensors file" * 10)
    files["cn1"] = write_tiny_controlnet(root / "cn1", seed=1)
    files["cn2"] = write_tiny_controlnet(root / "cn2", seed=2)
    # Far apart on purpose (black, white, noise), so swapping two rows' images shows in the pixels.
    noise = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)  # needs a resize to 64x48
    for name, pixels in (("img1", np.zeros((48, 64, 3), np.uint8)), ("img2", np.full((48, 64, 3), 255, np.uint8)),
                         ("img3", noise)):
        files[name] = root / f"{name}.png"
        Image.fromarray(pixels).save(files[name])
    return {name: str(path) for name, path in files.items()}


def _row(i, loras=(), controlnets=(), **extra) -> dict:
    row = {"id": f"r{i}", "prompt": "a small test picture", "negative_prompt": "", "seed": 7, "model": "tiny:sd15",
           "width": 64, "height": 48, "steps": 3, "scheduler": "euler", "guidance_scale": 5.0,
           "loras": [{"path": p, "weight": w} for p, w in loras],
           "controlnets": [{"model": m, "image": im, "scale": s} for m, im, s in controlnets]}
    return {**row, **extra}


def _renderer(tmp_path, s3=None, **variant_settings) -> Renderer:
    settings = RendererSettings(batch_size=4, io_threads=2, cpu_threads=2, s3=s3,
                                variants=VariantSettings(**variant_settings))
    return Renderer(LocalStore(str(tmp_path / "out")), settings)


@pytest.fixture(scope="module")
def renderer(tmp_path_factory):
    r = _renderer(tmp_path_factory.mktemp("shared"))
    yield r
    r.close()


@pytest.fixture
def fresh(tmp_path):
    """Makes new renderers (a fresh actor each) and closes them after the test."""
    made = []

    def make(**settings) -> Renderer:
        made.append(_renderer(tmp_path / f"r{len(made)}", **settings))
        return made[-1]

    yield make
    for r in made:
        r.close()


def _render(renderer, *rows) -> dict:
    out = {r.row["id"]: r for r in renderer.render_rows(list(rows))}
    assert all(r.error is None for r in out.values()), [r.error for r in out.values()]
    return out


def _px(rendered) -> np.ndarray:
    return np.asarray(rendered.image, dtype=np.int16)


def _image(renderer, row) -> np.ndarray:
    return _px(_render(renderer, row)[row["id"]])


def _diff(x, y) -> int:
    return int(np.abs(x - y).max())


def _bytes(path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def _sha(path) -> str:
    return hashlib.sha256(_bytes(path)).hexdigest()


def test_lora_changes_the_image_weight_zero_and_no_lora_give_the_base(renderer, assets):
    legacy = {k: v for k, v in _row(0).items() if k not in ("loras", "controlnets")}  # rows from before issue 3
    base = _image(renderer, legacy)
    lora = _render(renderer, _row(1, loras=[(assets["a"], 1.0)]))["r1"]
    assert _diff(_px(lora), base) > CHANGED
    assert lora.loras_used == [{"path": assets["a"], "sha256": _sha(assets["a"]), "weight": 1.0}]
    assert _diff(_image(renderer, _row(2, loras=[(assets["a"], 0.0)])), base) <= NOISE
    assert _diff(_image(renderer, _row(3)), base) <= NOISE  # a LoRA was used just before


def test_kohya_file_gives_the_diffusers_image_with_both_parts(renderer, assets):
    diffusers_image = _image(renderer, _row(0, loras=[(assets["a"], 0.8)]))
    kohya_image = _image(renderer, _row(1, loras=[(assets["a_kohya"], 0.8)]))
    unet_only = _image(renderer, _row(2, loras=[(assets["a_unet"], 0.8)]))
    assert _diff(kohya_image, diffusers_image) <= NOISE
    # Same UNet part, no text encoder part: the text encoder part matters, so kohya carried it over.
    assert _diff(unet_only, diffusers_image) > CHANGED
    base = _image(renderer, _row(3))
    assert _diff(unet_only, base) > CHANGED
    assert _diff(_image(renderer, _row(4, loras=[(assets["text_only"], 1.0)])), base) > CHANGED
    assert _diff(_image(renderer, _row(5, loras=[(assets["text_only"], 1.0), (assets["a_unet"], 0.8)])), unet_only) \
        > CHANGED


def test_the_text_encoder_part_is_loaded_as_the_file_holds_it_without_a_load_report(renderer, assets):
    """transformers prints a LOAD REPORT calling these weights MISSING while diffusers loads them; they are
    loaded (compared here with the file, up and down), and the report is kept out of the actor's log."""
    import logging
    import re

    from safetensors.torch import load_file

    from sdbatch.render.variants.loras import adapter_name

    reports = []
    handler = logging.Handler()
    handler.emit = lambda record: reports.append(record.getMessage())  # transformers' loggers do not propagate
    report_log = logging.getLogger("transformers.integrations.peft")
    report_log.addHandler(handler)
    try:
        for n, lora in enumerate(("c", "text_only")):  # the report comes once another adapter is resident
            _image(renderer, _row(n, loras=[(assets[lora], 1.0)]))
    finally:
        report_log.removeHandler(handler)
    assert not [r for r in reports if "LOAD REPORT" in r]
    loaded = renderer.model("tiny:sd15").pipeline.text_encoder.state_dict()
    name = adapter_name(_sha(assets["text_only"]))
    compared = 0
    for key, tensor in load_file(assets["text_only"]).items():
        layer, projection, side = re.search(r"layers\.(\d+)\.self_attn\.(\w+_proj)\.lora_linear_layer\.(up|down)",
                                            key).groups()
        part = "lora_B" if side == "up" else "lora_A"
        [match] = [k for k in loaded if f"layers.{layer}.self_attn.{projection}.{part}.{name}." in k]
        torch.testing.assert_close(loaded[match], tensor.to(loaded[match].dtype))
        compared += 1
    assert compared == 16  # 2 layers x 4 projections x up and down


def test_two_loras_on_one_row(renderer, assets):
    a = _image(renderer, _row(0, loras=[(assets["a"], 1.0)]))
    b = _image(renderer, _row(1, loras=[(assets["b"], 1.0)]))
    both = _render(renderer, _row(2, loras=[(assets["a"], 1.0), (assets["b"], 0.7)]))["r2"]
    pixels = _px(both)
    assert _diff(pixels, a) > CHANGED and _diff(pixels, b) > CHANGED
    assert [u["sha256"] for u in both.loras_used] == [_sha(assets["a"]), _sha(assets["b"])]


def test_controlnets_change_the_image_and_share_the_base_modules(renderer, assets):
    base = _image(renderer, _row(0))
    base_pipe = renderer.model("tiny:sd15").pipeline
    components = {k: v for k, v in base_pipe.components.items() if k != "scheduler"}  # the renderer sets that one
    one = _render(renderer, _row(1, controlnets=[(assets["cn1"], assets["img1"], 1.0)]))["r1"]
    assert _diff(_px(one), base) > CHANGED
    assert one.controlnets_used[0]["image_sha256"] == _sha(assets["img1"])
    assert one.controlnets_used[0]["model_hash"]
    zero = _image(renderer, _row(2, controlnets=[(assets["cn1"], assets["img1"], 0.0)]))
    assert _diff(zero, base) <= NOISE
    two = _render(renderer, _row(3, controlnets=[(assets["cn1"], assets["img1"], 1.0),
                                                  (assets["cn2"], assets["img3"], 0.8)]))["r3"]
    assert _diff(_px(two), _px(one)) > CHANGED
    assert len(two.controlnets_used) == 2
    pipe, _ = renderer._variants.controlnets.pipeline([assets["cn1"], assets["cn2"]])
    assert pipe.unet is base_pipe.unet and pipe.vae is base_pipe.vae and pipe.text_encoder is base_pipe.text_encoder
    assert type(base_pipe).__name__ == "StableDiffusionPipeline" and not hasattr(base_pipe, "controlnet")
    assert all(base_pipe.components[k] is v for k, v in components.items())
    assert base_pipe.unet.dtype == torch.float32
    assert _diff(_image(renderer, _row(4)), base) <= NOISE


def test_multi_controlnet_rows_keep_their_own_images_in_a_batch(renderer, assets):
    pair = [_row(0, controlnets=[(assets["cn1"], assets["img1"], 1.0), (assets["cn2"], assets["img2"], 1.0)]),
            _row(1, controlnets=[(assets["cn1"], assets["img2"], 1.0), (assets["cn2"], assets["img3"], 1.0)])]
    together = _render(renderer, *pair)
    assert {r.batch_size for r in together.values()} == {2}
    for row in pair:
        alone = _image(renderer, row)
        assert _diff(_px(together[row["id"]]), alone) <= NOISE
    assert _diff(alone, _px(together["r0"])) > CHANGED


def test_loras_apply_through_the_controlnet_pipeline(renderer, assets):
    lora_only = _image(renderer, _row(0, loras=[(assets["b"], 1.0)]))
    cn = (assets["cn1"], assets["img2"], 0.0)
    assert _diff(_image(renderer, _row(1, loras=[(assets["b"], 1.0)], controlnets=[cn])), lora_only) <= NOISE
    with_cn = _image(renderer, _row(2, loras=[(assets["b"], 1.0)], controlnets=[(cn[0], cn[1], 1.0)]))
    cn_only = _image(renderer, _row(3, controlnets=[(cn[0], cn[1], 1.0)]))
    assert _diff(with_cn, cn_only) > CHANGED


def test_a_row_does_not_depend_on_what_the_actor_rendered_before(fresh, assets):
    targets = [_row(0, loras=[(assets["b"], 0.9)], controlnets=[(assets["cn2"], assets["img2"], 0.7)]),
               _row(1), _row(2, loras=[(assets["a"], 0.5)])]
    alone = [_image(fresh(), row) for row in targets]
    busy = fresh(max_loras_resident=2, controlnets_on_device=2, controlnets_on_cpu=1)
    history = [_row(10, loras=[(assets["a"], 1.0), (assets["b"], 0.3)]),
               _row(11, loras=[(assets["a_kohya"], 1.0)], controlnets=[(assets["cn1"], assets["img1"], 1.0)]),
               _row(12, controlnets=[(assets["cn1"], assets["img1"], 1.0), (assets["cn2"], assets["img3"], 1.0)]),
               _row(13, loras=[(assets["c"], 2.0)], scheduler="ddim")]
    _render(busy, *history)
    # Rendered in one batch with other rows, and one at a time.
    together = _render(busy, *targets[1:])
    for fresh_image, row in zip(alone, targets):
        after = _image(busy, row)
        assert _diff(after, fresh_image) <= NOISE, row["id"]
        if row["id"] in together:
            assert _diff(_px(together[row["id"]]), fresh_image) <= NOISE


def test_bad_inputs_fail_only_their_rows(renderer, assets, tmp_path, monkeypatch):
    import huggingface_hub.constants

    # huggingface_hub reads HF_HUB_OFFLINE when first imported, maybe before tiny_cache set it.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    missing = str(tmp_path / "no-such-image.png")
    rows = (_row(0), _row(1, loras=[(assets["corrupt"], 1.0)]), _row(2, loras=[(assets["a"], 1.0)]),
            _row(3, controlnets=[(assets["cn1"], missing, 1.0)]),
            _row(4, controlnets=[(assets["cn1"], assets["img1"], 1.0)]),
            _row(5, controlnets=[(str(tmp_path / "no-such-controlnet"), assets["img1"], 1.0)]),
            _row(6, loras=[("nobody/no-such-lora", 1.0)]))
    result = renderer.render_shard(ShardTask("bad-inputs", "a1", rows, "png", 95))
    assert (result.rows_ok, result.rows_failed) == (3, 4), result.failures
    assert f"LoRA {assets['corrupt']}" in result.failures["r1"] and "safetensors" in result.failures["r1"]
    assert f"control image {missing}" in result.failures["r3"] and "no such file" in result.failures["r3"]
    assert "no-such-controlnet" in result.failures["r5"]
    assert "nobody/no-such-lora" in result.failures["r6"] and "not a local path" in result.failures["r6"]
    table = pq.read_table(io.BytesIO(renderer.store.get("metadata/bad-inputs.a1.parquet")))
    by_id = {r["id"]: r for r in table.to_pylist()}
    assert by_id["r1"]["status"] == "failed" and "LoRA" in by_id["r1"]["error"]
    assert by_id["r2"]["loras_used"] == [{"path": assets["a"], "sha256": _sha(assets["a"]), "weight": 1.0}]
    assert by_id["r4"]["controlnets_used"][0]["image_sha256"] == _sha(assets["img1"])
    assert by_id["r0"]["status"] == "ok" and by_id["r0"]["loras_used"] == []


def test_lora_loads_are_counted_and_at_most_k_adapters_stay(fresh, assets):
    renderer = fresh(max_loras_resident=2)
    pipe = renderer.model("tiny:sd15").pipeline

    def shard(name, *paths):
        rows = tuple(_row(i, loras=[(p, 1.0)]) for i, p in enumerate(paths))
        return renderer.render_shard(ShardTask(name, "a1", rows, "png", 95)).lora_loads

    assert shard("s1", assets["a"], assets["b"], assets["c"]) == 3
    assert all(len(names) <= 2 for names in pipe.get_list_adapters().values())
    assert renderer.resident()["loras"] == [_sha(assets["b"]), _sha(assets["c"])]
    assert shard("s2", assets["c"], assets["b"]) == 0  # resident: activating is not a load
    assert shard("s3", assets["a"]) == 1  # evicted earlier, loaded again
    assert shard("s4", assets["a_kohya"], assets["a"]) == 1  # other file, other content: a load


def test_state_dict_cache_is_bounded_and_never_mutated(fresh, assets):
    from diffusers import StableDiffusionPipeline

    states = [parse_lora(_bytes(assets[n]), _sha(assets[n]), StableDiffusionPipeline) for n in "abc"]
    cache = StateDictCache(budget=int(states[0].nbytes * 1.5))
    for state in states:
        cache.put(state)
        assert cache.nbytes <= cache.budget
    assert len(cache) == 1 and cache.get(states[2].sha256) is states[2] and cache.get(states[0].sha256) is None
    # Through a renderer: the cached tensors are the file's tensors even after loading and rendering.
    renderer = fresh(lora_cache_bytes=int(states[0].nbytes * 1.5))
    _render(renderer, _row(0, loras=[(assets["a"], 1.0)]), _row(1, loras=[(assets["b"], 1.0)]))
    cached = renderer._state_dicts.get(_sha(assets["b"]))
    assert len(renderer._state_dicts) == 1 and cached.state_dict.keys() == states[1].state_dict.keys()
    assert all(np.array_equal(cached.state_dict[k], states[1].state_dict[k]) for k in cached.state_dict)


def test_controlnet_cache_parks_and_counts(fresh, assets):
    renderer = fresh(controlnets_on_device=1, controlnets_on_cpu=1)

    def shard(name, *nets):
        rows = (_row(0, controlnets=[(n, assets["img1"], 1.0) for n in nets]),)
        return renderer.render_shard(ShardTask(name, "a1", rows, "png", 95))

    assert shard("c1", assets["cn1"]).controlnet_loads == 1
    assert shard("c2", assets["cn2"]).controlnet_loads == 1
    assert renderer.resident()["controlnets"] == {"device": [assets["cn2"]], "cpu": [assets["cn1"]]}
    # Back from host memory: on a CPU renderer nothing moves, so it is no load.
    assert shard("c3", assets["cn1"]).controlnet_loads == 0
    too_many = shard("c4", assets["cn1"], assets["cn2"])
    assert too_many.rows_failed == 1 and "controlnets_on_device" in too_many.failures["r0"]


def test_s3_control_image_and_lora(moto_env, moto_server, fresh, assets, tiny_cache):
    client = moto_server.client()
    client.create_bucket(Bucket="inputs")
    client.put_object(Bucket="inputs", Key="pose/img1.png", Body=_bytes(assets["img1"]))
    client.put_object(Bucket="inputs", Key="loras/a.safetensors", Body=_bytes(assets["a"]))
    renderer = fresh(s3=S3Settings(endpoint_url=moto_env))
    local = _row(0, loras=[(assets["a"], 1.0)], controlnets=[(assets["cn1"], assets["img1"], 1.0)])
    remote = _row(1, loras=[("s3://inputs/loras/a.safetensors", 1.0)],
                  controlnets=[(assets["cn1"], "s3://inputs/pose/img1.png", 1.0)])
    out = _render(renderer, local, remote)
    assert _diff(_px(out["r0"]), _px(out["r1"])) <= NOISE
    assert out["r1"].controlnets_used[0]["image_sha256"] == _sha(assets["img1"])
    assert out["r1"].loras_used[0]["sha256"] == _sha(assets["a"])
    assert renderer.lora_loads == 1  # same content under two paths: one adapter
    assert len(list((tiny_cache / "loras").rglob("a.safetensors"))) == 1
    # Overwritten in place: the node's copy follows the object's ETag, so a new actor gets the new LoRA.
    client.put_object(Bucket="inputs", Key="loras/a.safetensors", Body=_bytes(assets["b"]))
    again = _render(fresh(s3=S3Settings(endpoint_url=moto_env)), remote)["r1"]
    assert again.loras_used[0]["sha256"] == _sha(assets["b"])


def test_an_input_s3_cannot_serve_for_now_fails_the_shard_for_a_retry_not_its_row(s3_env, new_bucket, assets,
                                                                                  tmp_path, tiny_cache):
    """Throttling that outlasts the client's retries may pass: the shard fails, so the dispatcher retries it
    (adopting what was written) instead of failing the row for good. A missing object still fails its row."""
    from sdbatch.errors import InputUnavailable
    from sdbatch.store import open_store
    from tests.faults import FaultProxy

    open_store(f"s3://{new_bucket}", S3Settings(endpoint_url=s3_env)).put("pose/img1.png", _bytes(assets["img1"]))
    throttled = {"on": True}

    def rule(method: str, path: str, number: int) -> str | None:
        return "slowdown" if throttled["on"] and path.endswith("/pose/img1.png") else None

    rows = (_row(0), _row(1, controlnets=[(assets["cn1"], f"s3://{new_bucket}/pose/img1.png", 1.0)]),
            _row(2, controlnets=[(assets["cn1"], f"s3://{new_bucket}/pose/missing.png", 1.0)]))
    with FaultProxy(s3_env, rule) as proxy:
        renderer = _renderer(tmp_path, s3=S3Settings(endpoint_url=proxy.endpoint, max_attempts=2))
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


def test_http_failures_that_may_pass_are_told_apart_from_permanent_ones():
    """For http(s):// inputs: 429, 5xx and timeouts retry the shard; 404, DNS errors and the like fail the row."""
    import email.message
    import socket
    import urllib.error

    from sdbatch.render.variants.fetch import _may_pass

    def http(code: int) -> urllib.error.HTTPError:
        return urllib.error.HTTPError("http://x/i.png", code, "status", email.message.Message(), None)

    assert [_may_pass(e) for e in (http(429), http(503), urllib.error.URLError(socket.timeout("connect")),
                                   TimeoutError("read"))] == [True] * 4
    assert [_may_pass(e) for e in (http(404), http(403), urllib.error.URLError(OSError("Name or service not known")),
                                   FileNotFoundError("x"))] == [False] * 4


def test_prefetcher_reads_each_image_once_and_stays_a_bounded_window_ahead():
    from sdbatch.render.variants.fetch import Fetched, Prefetcher

    started = []

    class Recording(Fetcher):
        def read(self, uri):
            started.append(uri)  # list.append is atomic; the pool's threads may call this together
            return Fetched(uri.encode(), uri)

    prefetch = Prefetcher(Recording(), ["u0", "u1", "u0", "u2", "u3"], threads=2, ahead=2)  # u0: two rows
    prefetch._futures["u1"].result()
    assert sorted(started) == ["u0", "u1"]  # the window is full
    assert prefetch.get("u0").data == b"u0" and prefetch.get("u1").data == b"u1"
    prefetch._futures["u2"].result()
    assert sorted(started) == ["u0", "u1", "u2"]  # u1 used up: one slot freed; u0 still held for its 2nd row
    assert [prefetch.get(u).data for u in ("u3", "u0", "u2", "elsewhere")] == [b"u3", b"u0", b"u2", b"elsewhere"]
    assert sorted(started) == ["elsewhere", "u0", "u1", "u2", "u3"]  # each once; u3 read before its turn
    prefetch.close()


def test_fetcher_reads_http(tmp_path, assets):
    import functools
    import http.server
    import threading

    (tmp_path / "x.png").write_bytes(_bytes(assets["img1"]))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert Fetcher().read(f"http://127.0.0.1:{server.server_port}/x.png").sha256 == _sha(assets["img1"])
    finally:
        server.shutdown()
        server.server_close()
