"""The fast render path on the CPU: OOM halving, CPU threads, upload backpressure, channels_last, LoRA hotswap
slots (eager, and once into a compiled UNet: inductor's first compile of even the tiny UNet takes ~30 s on 2
cores), precision choice."""

import tempfile
import threading
import time
import weakref

import numpy as np
import pytest
import torch

from sdbatch.output.commits import MARKER_PREFIX
from sdbatch.render.models.fastpath import (
    auto_batch_size,
    keep_vae_in_float32,
    pick_dtype,
)
from sdbatch.render.renderer import Renderer
from sdbatch.render.variants.hotswap import HotswapLoras
from sdbatch.settings import FastPath, RendererSettings
from sdbatch.store.local import LocalStore
from sdbatch.tasks import ShardTask
from tests.support.tiny_variants import write_tiny_lora

pytestmark = pytest.mark.usefixtures("tiny_cache")


def _row(i: int, **extra) -> dict:
    row = {"id": f"r{i}", "prompt": f"a small test picture {i}", "negative_prompt": "", "seed": 100 + i,
           "model": "tiny:sd15", "width": 64, "height": 48, "steps": 3, "scheduler": "euler",
           "guidance_scale": 5.0, "loras": [], "controlnets": []}
    return {**row, **extra}


def _pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


class OomRenderer(Renderer):
    """A GPU that fits at most `fits` rows per call: larger calls raise CUDA's out-of-memory error."""

    fits = 2

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[int] = []

    def _call_pipeline(self, batch):
        self.calls.append(len(batch.rows))
        if len(batch.rows) > self.fits:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super()._call_pipeline(batch)


def test_out_of_memory_halves_the_batch_and_the_variant_keeps_the_smaller_size(tmp_path):
    renderer = OomRenderer(LocalStore(str(tmp_path)), RendererSettings(batch_size=4, io_threads=1))
    rows = [_row(i) for i in range(8)]
    out = list(renderer.render_rows(rows))
    assert [r.ok for r in out] == [True] * 8
    assert [r.batch_size for r in out] == [2] * 8
    assert renderer.calls == [4, 2, 2, 2, 2]  # one failed call of 4; the next batch starts at 2
    assert renderer.batch_limit(rows[0]) == 2
    assert renderer.batch_limit(_row(0, steps=4)) == 4  # another variant has its own size
    alone = next(iter(Renderer(LocalStore(str(tmp_path)), RendererSettings(batch_size=1)).render_rows([rows[5]])))
    assert np.abs(_pixels(alone.image) - _pixels(out[5].image)).max() <= 1
    renderer.close()


def test_a_row_that_does_not_fit_alone_fails_with_the_error_and_the_rest_render(tmp_path):
    renderer = OomRenderer(LocalStore(str(tmp_path)), RendererSettings(batch_size=3, io_threads=1))
    renderer.fits = 0
    out = list(renderer.render_rows([_row(i) for i in range(3)]))
    assert renderer.calls == [3, 2, 1, 1, 1]  # halves of 3 are 2 and 1, then single rows
    assert all(not r.ok and r.error.startswith("OutOfMemoryError: CUDA out of memory") for r in out)
    renderer.close()


def test_cpu_threads_are_applied():
    before = torch.get_num_threads()
    try:
        Renderer(LocalStore(tempfile.mkdtemp()), RendererSettings(cpu_threads=1)).close()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


class SlowStore(LocalStore):
    """A real LocalStore whose create-once writes take `delay` seconds; records the images alive at each write."""

    def __init__(self, root: str, delay: float):
        super().__init__(root)
        self.delay, self.images, self.seen = delay, [], []  # images: weak references (PIL images are unhashable)
        self._lock = threading.Lock()

    def put_once(self, key, data):
        with self._lock:
            self.seen.append(sum(ref() is not None for ref in self.images))
        time.sleep(self.delay)
        return super().put_once(key, data)


class TrackingRenderer(Renderer):
    def _call_pipeline(self, batch):
        images, size, scheduler = super()._call_pipeline(batch)
        self.store.images.extend(weakref.ref(image) for image in images)
        return images, size, scheduler


class CommitGate(LocalStore):
    """The first shard marker waits (at most `wait` s) until images of every shard in `shards` are written."""

    def __init__(self, root: str, shards: set[str], wait: float):
        super().__init__(root)
        self.waiting, self.wait = set(shards), wait
        self.all_written, self.overlapped = threading.Event(), None
        self._lock = threading.Lock()

    def put_once(self, key, data):
        with self._lock:
            self.waiting.discard(key.split("/")[1] if key.startswith("images/") else None)
            if not self.waiting:
                self.all_written.set()
            first_marker = key.startswith(MARKER_PREFIX) and self.overlapped is None
        if first_marker:
            self.overlapped = self.all_written.wait(self.wait)
        return super().put_once(key, data)


def test_an_actor_renders_the_next_shard_while_the_last_one_commits(tmp_path):
    """I/O off the device's path, shard ends included: with two calls in flight (Ray's max_concurrency),
    the first shard's commit is held until the second shard has written images. Serial shards would
    reach that point only after the first call returned, so the gate would time out."""
    from concurrent.futures import ThreadPoolExecutor

    from sdbatch.engine.actor import RenderActor
    store = CommitGate(str(tmp_path), {"s1", "s2"}, wait=60)
    actor = RenderActor(store, RendererSettings(batch_size=2, device="cpu"))  # the class Ray runs, in-process
    actor.warm("tiny:sd15")
    tasks = [ShardTask(shard, "a1", tuple(_row(i + offset) for i in range(2)), "png", 95)
             for shard, offset in (("s1", 0), ("s2", 10))]
    with ThreadPoolExecutor(2) as calls:
        results = list(calls.map(actor.render_shard, tasks))
    assert store.overlapped is True
    assert [(r.committed, r.rows_ok) for r in results] == [(True, 2), (True, 2)]


def test_a_slow_store_slows_rendering_instead_of_holding_images(tmp_path):
    store = SlowStore(str(tmp_path), 0.15)
    renderer = TrackingRenderer(store, RendererSettings(batch_size=2, io_threads=1))
    rows = tuple(_row(i) for i in range(16))
    started = time.perf_counter()
    result = renderer.render_shard(ShardTask("slow", "a1", rows, "png", 95))
    renderer.close()
    assert result.rows_ok == 16
    assert time.perf_counter() - started >= 16 * 0.15  # the store set the pace
    # 2 upload slots per io thread, the batch being handed over and the one being rendered: not 16.
    assert max(store.seen) <= 2 * 1 + 2 * 2


def test_channels_last_and_explicit_float32_give_the_same_images(tmp_path):
    rows = [_row(i) for i in range(2)]
    images = []
    for fast in (FastPath(), FastPath(channels_last=True, dtype="float32")):
        renderer = Renderer(LocalStore(str(tmp_path)), RendererSettings(batch_size=2, fast=fast))
        images.append([_pixels(r.image) for r in renderer.render_rows(rows)])
        unet = renderer.model("tiny:sd15").pipeline.unet
        assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last) == bool(fast.channels_last)
        renderer.close()
    assert max(np.abs(a - b).max() for a, b in zip(*images)) <= 1


def test_attention_runs_through_sdpa(tmp_path):
    from diffusers.models.attention_processor import AttnProcessor2_0

    renderer = Renderer(LocalStore(str(tmp_path)))
    processors = renderer.model("tiny:sd15").pipeline.unet.attn_processors.values()
    assert processors and all(isinstance(p, AttnProcessor2_0) for p in processors)


def test_hotswap_slots_give_the_same_images_as_resident_adapters(tmp_path):
    """What a compiled UNet uses (weights copied into fixed slots), checked eagerly against the default path."""
    a = str(write_tiny_lora(tmp_path / "a.safetensors", 1))
    b = str(write_tiny_lora(tmp_path / "b.safetensors", 2))
    unet_only = str(write_tiny_lora(tmp_path / "u.safetensors", 3, text_encoder=False))
    sets = [[(a, 0.8)], [(b, 1.0)], [(a, 0.8), (b, 0.5)], [], [(unet_only, 1.0)], [(b, 0.3), (a, 1.0)], [(a, 0.8)]]
    rows = [_row(i, seed=7, loras=[{"path": p, "weight": w} for p, w in loras]) for i, loras in enumerate(sets)]

    def render(hotswap: bool):
        renderer = Renderer(LocalStore(str(tmp_path / "out")), RendererSettings(batch_size=1))
        renderer.model("tiny:sd15")
        variants = renderer._variants
        if hotswap:
            variants.loras = HotswapLoras(variants.base, renderer._state_dicts, renderer._fetcher, slots=2, rank=8)
        return [_pixels(r.image) for r in renderer.render_rows(rows)], variants.loras

    expected, _ = render(hotswap=False)
    got, slots = render(hotswap=True)
    assert [int(np.abs(x - y).max()) for x, y in zip(expected, got)] == [0] * len(rows)
    assert slots.rebuilds == 0 and slots.loads == 8  # copies into slots; none re-created
    assert np.abs(expected[0] - expected[3]).max() > 10  # the LoRAs matter, so the comparison can fail


def test_a_compiled_unet_takes_lora_changes_without_recompiling(tmp_path):
    """With compile, LoRA changes go into the compiled UNet's fixed slots. The first row that needs a second
    slot adds it: one recompile, once per actor (a recompile costs what the first compile did, a minute
    at SD1.5 size). After that no LoRA change recompiles, and the compiled UNet computes what its eager
    self does with the LoRAs of the moment (that the slots hold the right LoRAs: the test above)."""
    import torch._dynamo.utils as dynamo_utils

    def graphs() -> int:
        return dynamo_utils.counters["stats"]["unique_graphs"]

    a = str(write_tiny_lora(tmp_path / "a.safetensors", 1))
    b = str(write_tiny_lora(tmp_path / "b.safetensors", 2))
    sets = [[(a, 0.8)], [(a, 0.8), (b, 0.5)], [(b, 1.0)], [], [(b, 0.3), (a, 1.0)], [(a, 0.8)]]
    rows = [_row(i, seed=7, loras=[{"path": p, "weight": w} for p, w in loras]) for i, loras in enumerate(sets)]
    torch._dynamo.reset()
    renderer = Renderer(LocalStore(str(tmp_path)),
                        RendererSettings(batch_size=1, fast=FastPath(compile=True, lora_rank=8, lora_slots=2)))
    compiles, outputs = [], []
    try:
        for row in rows:
            before = graphs()
            assert [r.error for r in renderer.render_rows([row])] == [None]
            compiles.append(graphs() - before)
            unet = renderer.model("tiny:sd15").pipeline.unet
            inputs = (torch.randn(2, 4, 6, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([500, 500]))
            hidden = torch.randn(2, 77, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
            with torch.inference_mode():
                compiled = unet(*inputs, encoder_hidden_states=hidden).sample  # its own graph: other shapes
                eager = unet._call_impl(*inputs, encoder_hidden_states=hidden).sample  # the module, not compiled
            # Inductor's fused kernels round differently, and the random tiny UNet amplifies that to ~1e-3;
            # a slot read stale would be off by ~0.3 or more.
            torch.testing.assert_close(compiled, eager, atol=0.02, rtol=0)
            outputs.append(compiled)
        assert renderer._variants.loras.rebuilds == 0
    finally:
        renderer.close()
        torch._dynamo.reset()
    assert compiles == [1, 1, 0, 0, 0, 0]
    assert (outputs[0] - outputs[3]).abs().max() > 0.3  # the LoRAs change what the compiled UNet computes
    torch.testing.assert_close(outputs[0], outputs[5])  # the same LoRA again: the same UNet


def test_precision_choice():
    assert pick_dtype(torch.device("cpu")) == torch.float32
    assert pick_dtype(torch.device("cpu"), "bfloat16") == torch.bfloat16
    with pytest.raises(ValueError, match="dtype 'half' is not known"):
        pick_dtype(torch.device("cpu"), "half")
    assert auto_batch_size(torch.device("cpu"), torch.float32, 512, 512) == 4


def test_a_float32_vae_decodes_half_precision_latents():
    """The fp16 SDXL arrangement: UNet in half, VAE kept in float32, inputs cast on the way in."""
    from sdbatch.render.tiny.build import build_pipeline

    vae = build_pipeline(0).vae.to(torch.float16)
    keep_vae_in_float32(vae)
    with torch.inference_mode():
        image = vae.decode(torch.randn(1, 4, 8, 8, dtype=torch.float16)).sample
    assert vae.dtype == torch.float32 and image.dtype == torch.float32
