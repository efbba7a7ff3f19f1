"""Score steps: seconds per image of each post-render step (render/steps/) at CLIP ViT-L/14 size, and CLIP's share.

One process, a random-weight CLIPModel of ViT-L/14's published sizes (vision: width 1024, 24 layers, 16 heads, patch
14, 224 px; text: width 768, 12 layers, 12 heads; projection 768; no hub), CLIP's own preprocessing (bicubic resize of
the short side to 224, center crop, normalize), LAION's aesthetic MLP layout and a ReLU Linear safety head, both
random. Batches of 8 RGB noise images at 512x512 with 8 prompts; per batch, timed in turn:
  embed      the CLIP image embedding (preprocessing + vision tower), computed once and shared by the next three
             (preprocessing alone is also reported: it runs on the CPU even when the model is on a GPU)
  clip       the prompts' text embeddings and the cosines
  aesthetic  the MLP over the shared embedding
  safety     the Linear stack and sigmoid
  phash      imagehash.phash per image
The first batch warms up and is not counted. Reported: median seconds per image of each, over repeats, and CLIP's
share (embed + clip over all). The tokenizer is the tiny models' byte-level one (a token per character, cut at 77):
text costs at most what CLIP's BPE would.

    .venv/bin/python bench/score_steps.py            # ViT-L/14 on the CPU: minutes on 2 cores
    .venv/bin/python bench/score_steps.py --quick    # the tiny CLIP, small images: seconds
    python bench/score_steps.py --device cuda        # fp16 CLIP, as the Scorer loads it there
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from sdbatch.render.steps import STEPS, ScoreBatch, StepContext  # noqa: E402
from sdbatch.render.steps.clip import Clip, clip_dtype, image_processor_class  # noqa: E402
from sdbatch.render.tiny import scorers as tiny  # noqa: E402
from sdbatch.render.tiny.sd15 import MAX_TOKENS, make_tokenizer  # noqa: E402
from sdbatch.settings import ScoreSettings  # noqa: E402

# openai/clip-vit-large-patch14's config.json values.
VIT_L14_VISION = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                      image_size=224, patch_size=14, hidden_act="quick_gelu")
VIT_L14_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                    max_position_embeddings=MAX_TOKENS, hidden_act="quick_gelu")
VIT_L14_PROJECTION = 768
SAFETY_WIDTHS = (64, 512, 256, 1)  # a head of the NSFW detector's kind: small beside CLIP whatever its widths
PARTS = ("embed", "clip", "aesthetic", "safety", "phash")


def vit_l14(tokenizer):
    from transformers import CLIPConfig, CLIPModel

    text = {**VIT_L14_TEXT, "vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    torch.manual_seed(0)
    return CLIPModel(CLIPConfig(text_config=text, vision_config=VIT_L14_VISION, projection_dim=VIT_L14_PROJECTION))


def build_clip(quick: bool, device: torch.device, folder: Path) -> Clip:
    tokenizer = make_tokenizer()
    model = tiny.build_clip(0)[0] if quick else vit_l14(tokenizer)
    size = model.config.vision_config.image_size
    (folder / "preprocessor_config.json").write_text(json.dumps(tiny.processor_config(size)))
    dtype = clip_dtype(device)
    return Clip("bench:" + ("tiny" if quick else "vit-l-14"), model.eval().to(device, dtype), tokenizer,
                image_processor_class().from_pretrained(folder), device, dtype, "random")


def build_steps(clip: Clip, folder: Path) -> dict:
    dim = clip.embed_dim
    save_file(tiny.aesthetic_state(1, dim), str(folder / "aesthetic.safetensors"))
    safety = tiny.linear_state(SAFETY_WIDTHS, tuple(range(len(SAFETY_WIDTHS))), 2, dim)
    save_file(safety, str(folder / "safety.safetensors"))
    settings = ScoreSettings(steps=tuple(STEPS), aesthetic_model=str(folder / "aesthetic.safetensors"),
                             safety_model=str(folder / "safety.safetensors"))
    context = StepContext(settings, clip.device, None, lambda: clip)
    steps = {}
    for name, factory in STEPS.items():
        try:
            steps[name] = factory(context)
        except ImportError as exc:  # e.g. the GPU image has no imagehash/scipy: that step is not measured
            print(f"{name}: not measured ({exc})")
    return steps


def images(count: int, side: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(count)]


def timed_batch(clip: Clip, steps: dict, pictures: list[Image.Image], prompts: list[str]) -> dict[str, float]:
    """Seconds of each part for one batch; the embedding first, so the steps find it computed."""
    seconds = {}
    with torch.inference_mode():
        started = time.perf_counter()
        clip.processor(images=pictures, return_tensors="pt")
        seconds["preprocess"] = time.perf_counter() - started
        batch = ScoreBatch(pictures, prompts, clip.embed_images)
        started = time.perf_counter()
        batch.image_embeds()
        _sync(clip.device)
        seconds["embed"] = time.perf_counter() - started
        for name, step in steps.items():
            started = time.perf_counter()
            step.score(batch)
            _sync(clip.device)
            seconds[name] = time.perf_counter() - started
    return seconds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny CLIP, 128 px images, batch 4, 2 repeats")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--size", type=int, default=None, help="image side in pixels")
    parser.add_argument("--json-out", default=None, help="also write the figures here (bench/gpu/summary.py)")
    args = parser.parse_args()
    batch = args.batch or (4 if args.quick else 8)
    repeats = args.repeats or (2 if args.quick else 3)
    side = args.size or (128 if args.quick else 512)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        clip = build_clip(args.quick, device, Path(folder))
        steps = build_steps(clip, Path(folder))
        print(f"{clip.reference} on {device} ({str(clip.dtype).removeprefix('torch.')}), built in "
              f"{time.perf_counter() - started:.1f} s; {side}x{side} images, batch {batch}, {repeats} repeats, "
              f"{torch.get_num_threads()} torch threads")
        prompts = [f"a photo of a red fox in the snow, number {i}" for i in range(batch)]
        timed_batch(clip, steps, images(batch, side, 99), prompts)  # warm-up
        runs = [timed_batch(clip, steps, images(batch, side, r), prompts) for r in range(repeats)]
    measured = [part for part in ("preprocess", *PARTS) if part in runs[0]]
    per_image = {part: statistics.median(run[part] for run in runs) / batch for part in measured}
    report(per_image)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({
            "device": str(device), "dtype": str(clip.dtype).removeprefix("torch."), "size": side, "batch": batch,
            "repeats": repeats, "seconds_per_image": per_image, "total": sum(per_image.get(p, 0) for p in PARTS)},
            indent=1))


def report(per_image: dict[str, float]) -> None:
    parts = [part for part in PARTS if part in per_image]
    total = sum(per_image[part] for part in parts)
    for part in parts:
        extra = f"  (of which preprocessing {per_image['preprocess']:.4f})" if part == "embed" else ""
        print(f"{part:>10}: {per_image[part]:.4f} s/image  {per_image[part] / total:6.1%}{extra}")
    print(f"{'all':>10}: {total:.4f} s/image")
    print(f"CLIP share (embed + clip): {(per_image['embed'] + per_image['clip']) / total:.1%}")


if __name__ == "__main__":
    main()
