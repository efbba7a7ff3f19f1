"""Per-row LoRAs and ControlNets on the warm pipeline: effect, formats, order independence, failures, caches."""

import io

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from sdbatch.render.variants.fetch import Fetcher
from sdbatch.render.variants.loras import StateDictCache, parse_lora
from sdbatch.tasks import ShardTask
from tests.support.variant_render import (
    CHANGED,
    NOISE,
    Renderers,
    image_of,
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


@pytest.fixture(scope="module")
def renderer(tmp_path_factory):
    r = new_renderer(tmp_path_factory.mktemp("shared"))
    yield r
    r.close()


@pytest.fixture
def fresh(tmp_path):
    """Makes new renderers (a fresh actor each) and closes them after the test."""
    made = Renderers(tmp_path)
    yield made
    made.close()


def test_lora_changes_the_image_weight_zero_and_no_lora_give_the_base(renderer, assets):
    legacy = {k: v for k, v in variant_row(0).items() if k not in ("loras", "controlnets")}  # rows from before issue 3
    base = image_of(renderer, legacy)
    lora = render_all(renderer, variant_row(1, loras=[(assets["a"], 1.0)]))["r1"]
    assert max_diff(pixels_of(lora), base) > CHANGED
    assert lora.loras_used == [{"path": assets["a"], "sha256": sha256_of(assets["a"]), "weight": 1.0}]
    assert max_diff(image_of(renderer, variant_row(2, loras=[(assets["a"], 0.0)])), base) <= NOISE
    assert max_diff(image_of(renderer, variant_row(3)), base) <= NOISE  # a LoRA was used just before


def test_kohya_file_gives_the_diffusers_image_with_both_parts(renderer, assets):
    diffusers_image = image_of(renderer, variant_row(0, loras=[(assets["a"], 0.8)]))
    kohya_image = image_of(renderer, variant_row(1, loras=[(assets["a_kohya"], 0.8)]))
    unet_only = image_of(renderer, variant_row(2, loras=[(assets["a_unet"], 0.8)]))
    assert max_diff(kohya_image, diffusers_image) <= NOISE
    # Same UNet part, no text encoder part: the text encoder part matters, so kohya carried it over.
    assert max_diff(unet_only, diffusers_image) > CHANGED
    base = image_of(renderer, variant_row(3))
    assert max_diff(unet_only, base) > CHANGED
    assert max_diff(image_of(renderer, variant_row(4, loras=[(assets["text_only"], 1.0)])), base) > CHANGED
    both_parts = image_of(renderer, variant_row(5, loras=[(assets["text_only"], 1.0), (assets["a_unet"], 0.8)]))
    assert max_diff(both_parts, unet_only) > CHANGED


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
            image_of(renderer, variant_row(n, loras=[(assets[lora], 1.0)]))
    finally:
        report_log.removeHandler(handler)
    assert not [r for r in reports if "LOAD REPORT" in r]
    loaded = renderer.model("tiny:sd15").pipeline.text_encoder.state_dict()
    name = adapter_name(sha256_of(assets["text_only"]))
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
    a = image_of(renderer, variant_row(0, loras=[(assets["a"], 1.0)]))
    b = image_of(renderer, variant_row(1, loras=[(assets["b"], 1.0)]))
    both = render_all(renderer, variant_row(2, loras=[(assets["a"], 1.0), (assets["b"], 0.7)]))["r2"]
    pixels = pixels_of(both)
    assert max_diff(pixels, a) > CHANGED and max_diff(pixels, b) > CHANGED
    assert [u["sha256"] for u in both.loras_used] == [sha256_of(assets["a"]), sha256_of(assets["b"])]


def test_controlnets_change_the_image_and_share_the_base_modules(renderer, assets):
    base = image_of(renderer, variant_row(0))
    base_pipe = renderer.model("tiny:sd15").pipeline
    components = {k: v for k, v in base_pipe.components.items() if k != "scheduler"}  # the renderer sets that one
    one = render_all(renderer, variant_row(1, controlnets=[(assets["cn1"], assets["img1"], 1.0)]))["r1"]
    assert max_diff(pixels_of(one), base) > CHANGED
    assert one.controlnets_used[0]["image_sha256"] == sha256_of(assets["img1"])
    assert one.controlnets_used[0]["model_hash"]
    zero = image_of(renderer, variant_row(2, controlnets=[(assets["cn1"], assets["img1"], 0.0)]))
    assert max_diff(zero, base) <= NOISE
    two = render_all(renderer, variant_row(3, controlnets=[(assets["cn1"], assets["img1"], 1.0),
                                                          (assets["cn2"], assets["img3"], 0.8)]))["r3"]
    assert max_diff(pixels_of(two), pixels_of(one)) > CHANGED
    assert len(two.controlnets_used) == 2
    pipe, _ = renderer._variants.controlnets.pipeline([assets["cn1"], assets["cn2"]])
    assert pipe.unet is base_pipe.unet and pipe.vae is base_pipe.vae and pipe.text_encoder is base_pipe.text_encoder
    assert type(base_pipe).__name__ == "StableDiffusionPipeline" and not hasattr(base_pipe, "controlnet")
    assert all(base_pipe.components[k] is v for k, v in components.items())
    assert base_pipe.unet.dtype == torch.float32
    assert max_diff(image_of(renderer, variant_row(4)), base) <= NOISE


def test_the_same_controlnet_twice_in_a_row_renders_each_of_its_images(renderer, assets):
    """Two A1111 units of one ControlNet model: loaded once, run once per image."""
    loads = renderer._variants.controlnets.loads
    twice = render_all(renderer, variant_row(0, controlnets=[(assets["cn1"], assets["img1"], 1.0),
                                                            (assets["cn1"], assets["img3"], 1.0)]))["r0"]
    assert twice.error is None and len(twice.controlnets_used) == 2
    assert [c["image_sha256"] for c in twice.controlnets_used] == [sha256_of(assets["img1"]), sha256_of(assets["img3"])]
    once = image_of(renderer, variant_row(1, controlnets=[(assets["cn1"], assets["img1"], 1.0)]))
    assert max_diff(pixels_of(twice), once) > CHANGED  # the second image counts
    assert renderer._variants.controlnets.loads - loads <= 1


def test_multi_controlnet_rows_keep_their_own_images_in_a_batch(renderer, assets):
    pair = [variant_row(0, controlnets=[(assets["cn1"], assets["img1"], 1.0), (assets["cn2"], assets["img2"], 1.0)]),
            variant_row(1, controlnets=[(assets["cn1"], assets["img2"], 1.0), (assets["cn2"], assets["img3"], 1.0)])]
    together = render_all(renderer, *pair)
    assert {r.batch_size for r in together.values()} == {2}
    for row in pair:
        alone = image_of(renderer, row)
        assert max_diff(pixels_of(together[row["id"]]), alone) <= NOISE
    assert max_diff(alone, pixels_of(together["r0"])) > CHANGED


def test_loras_apply_through_the_controlnet_pipeline(renderer, assets):
    lora_only = image_of(renderer, variant_row(0, loras=[(assets["b"], 1.0)]))
    cn = (assets["cn1"], assets["img2"], 0.0)
    lora_and_zero_cn = image_of(renderer, variant_row(1, loras=[(assets["b"], 1.0)], controlnets=[cn]))
    assert max_diff(lora_and_zero_cn, lora_only) <= NOISE
    with_cn = image_of(renderer, variant_row(2, loras=[(assets["b"], 1.0)], controlnets=[(cn[0], cn[1], 1.0)]))
    cn_only = image_of(renderer, variant_row(3, controlnets=[(cn[0], cn[1], 1.0)]))
    assert max_diff(with_cn, cn_only) > CHANGED


def test_a_row_does_not_depend_on_what_the_actor_rendered_before(fresh, assets):
    targets = [variant_row(0, loras=[(assets["b"], 0.9)], controlnets=[(assets["cn2"], assets["img2"], 0.7)]),
               variant_row(1), variant_row(2, loras=[(assets["a"], 0.5)])]
    alone = [image_of(fresh(), row) for row in targets]
    busy = fresh(max_loras_resident=2, controlnets_on_device=2, controlnets_on_cpu=1)
    history = [variant_row(10, loras=[(assets["a"], 1.0), (assets["b"], 0.3)]),
               variant_row(11, loras=[(assets["a_kohya"], 1.0)], controlnets=[(assets["cn1"], assets["img1"], 1.0)]),
               variant_row(12, controlnets=[(assets["cn1"], assets["img1"], 1.0),
                                            (assets["cn2"], assets["img3"], 1.0)]),
               variant_row(13, loras=[(assets["c"], 2.0)], scheduler="ddim")]
    render_all(busy, *history)
    # Rendered in one batch with other rows, and one at a time.
    together = render_all(busy, *targets[1:])
    for fresh_image, row in zip(alone, targets):
        after = image_of(busy, row)
        assert max_diff(after, fresh_image) <= NOISE, row["id"]
        if row["id"] in together:
            assert max_diff(pixels_of(together[row["id"]]), fresh_image) <= NOISE


def test_bad_inputs_fail_only_their_rows(renderer, assets, tmp_path, monkeypatch):
    import huggingface_hub.constants

    # huggingface_hub reads HF_HUB_OFFLINE when first imported, maybe before tiny_cache set it.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    missing = str(tmp_path / "no-such-image.png")
    rows = (variant_row(0), variant_row(1, loras=[(assets["corrupt"], 1.0)]),
            variant_row(2, loras=[(assets["a"], 1.0)]),
            variant_row(3, controlnets=[(assets["cn1"], missing, 1.0)]),
            variant_row(4, controlnets=[(assets["cn1"], assets["img1"], 1.0)]),
            variant_row(5, controlnets=[(str(tmp_path / "no-such-controlnet"), assets["img1"], 1.0)]),
            variant_row(6, loras=[("nobody/no-such-lora", 1.0)]))
    result = renderer.render_shard(ShardTask("bad-inputs", "a1", rows, "png", 95))
    assert (result.rows_ok, result.rows_failed) == (3, 4), result.failures
    assert f"LoRA {assets['corrupt']}" in result.failures["r1"] and "safetensors" in result.failures["r1"]
    assert f"control image {missing}" in result.failures["r3"] and "no such file" in result.failures["r3"]
    assert "no-such-controlnet" in result.failures["r5"]
    assert "nobody/no-such-lora" in result.failures["r6"] and "not a local path" in result.failures["r6"]
    table = pq.read_table(io.BytesIO(renderer.store.get("metadata/bad-inputs/a1.parquet")))
    by_id = {r["id"]: r for r in table.to_pylist()}
    assert by_id["r1"]["status"] == "failed" and "LoRA" in by_id["r1"]["error"]
    assert by_id["r2"]["loras_used"] == [{"path": assets["a"], "sha256": sha256_of(assets["a"]), "weight": 1.0}]
    assert by_id["r4"]["controlnets_used"][0]["image_sha256"] == sha256_of(assets["img1"])
    assert by_id["r0"]["status"] == "ok" and by_id["r0"]["loras_used"] == []


def test_lora_loads_are_counted_and_at_most_k_adapters_stay(fresh, assets):
    renderer = fresh(max_loras_resident=2)
    pipe = renderer.model("tiny:sd15").pipeline

    def shard(name, *paths):
        rows = tuple(variant_row(i, loras=[(p, 1.0)]) for i, p in enumerate(paths))
        return renderer.render_shard(ShardTask(name, "a1", rows, "png", 95)).lora_loads

    assert shard("s1", assets["a"], assets["b"], assets["c"]) == 3
    assert all(len(names) <= 2 for names in pipe.get_list_adapters().values())
    assert renderer.resident()["loras"] == [sha256_of(assets["b"]), sha256_of(assets["c"])]
    assert shard("s2", assets["c"], assets["b"]) == 0  # resident: activating is not a load
    assert shard("s3", assets["a"]) == 1  # evicted earlier, loaded again
    assert shard("s4", assets["a_kohya"], assets["a"]) == 1  # other file, other content: a load


def test_state_dict_cache_is_bounded_and_never_mutated(fresh, assets):
    from diffusers import StableDiffusionPipeline

    states = [parse_lora(read_bytes(assets[n]), sha256_of(assets[n]), StableDiffusionPipeline) for n in "abc"]
    cache = StateDictCache(budget=int(states[0].nbytes * 1.5))
    for state in states:
        cache.put(state)
        assert cache.nbytes <= cache.budget
    assert len(cache) == 1 and cache.get(states[2].sha256, "sd1") is states[2]
    assert cache.get(states[0].sha256, "sd1") is None and cache.get(states[2].sha256, "flux") is None
    # Through a renderer: the cached tensors are the file's tensors even after loading and rendering.
    renderer = fresh(lora_cache_bytes=int(states[0].nbytes * 1.5))
    render_all(renderer, variant_row(0, loras=[(assets["a"], 1.0)]), variant_row(1, loras=[(assets["b"], 1.0)]))
    cached = renderer._state_dicts.get(sha256_of(assets["b"]), "sd1")
    assert len(renderer._state_dicts) == 1 and cached.state_dict.keys() == states[1].state_dict.keys()
    assert all(np.array_equal(cached.state_dict[k], states[1].state_dict[k]) for k in cached.state_dict)


def test_controlnet_cache_parks_and_counts(fresh, assets):
    renderer = fresh(controlnets_on_device=1, controlnets_on_cpu=1)

    def shard(name, *nets):
        rows = (variant_row(0, controlnets=[(n, assets["img1"], 1.0) for n in nets]),)
        return renderer.render_shard(ShardTask(name, "a1", rows, "png", 95))

    assert shard("c1", assets["cn1"]).controlnet_loads == 1
    assert shard("c2", assets["cn2"]).controlnet_loads == 1
    assert renderer.resident()["controlnets"] == {"device": [assets["cn2"]], "cpu": [assets["cn1"]]}
    # Back from host memory: on a CPU renderer nothing moves, so it is no load.
    assert shard("c3", assets["cn1"]).controlnet_loads == 0
    too_many = shard("c4", assets["cn1"], assets["cn2"])
    assert too_many.rows_failed == 1 and "controlnets_on_device" in too_many.failures["r0"]


def test_http_failures_that_may_pass_are_told_apart_from_permanent_ones():
    """For http(s):// inputs: 429, 5xx and timeouts retry the shard; 404, DNS errors and the like fail the row."""
    import email.message
    import urllib.error

    from sdbatch.errors import may_pass as _may_pass

    def http(code: int) -> urllib.error.HTTPError:
        return urllib.error.HTTPError("http://x/i.png", code, "status", email.message.Message(), None)

    assert [_may_pass(e) for e in (http(429), http(503), urllib.error.URLError(TimeoutError("connect")),
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

    (tmp_path / "x.png").write_bytes(read_bytes(assets["img1"]))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert Fetcher().read(f"http://127.0.0.1:{server.server_port}/x.png").sha256 == sha256_of(assets["img1"])
    finally:
        server.shutdown()
        server.server_close()
