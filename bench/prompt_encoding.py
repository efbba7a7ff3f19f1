"""Prompt encoding: sdbatch's A1111 encoder (render/text) against diffusers' encode_prompt, side by side.

One CPU process, a CLIP-L-sized text encoder (SD1.5's: 12 layers, width 768) with random weights and the byte-level
tokenizer of the tiny model (no vocabulary files). Batches of 8 rows, each with a negative prompt, timed in
alternating order (A B B A ...) for several rounds:
  A  diffusers' StableDiffusionPipeline.encode_prompt on plain prompts (what sdbatch called before)
  B  sdbatch's PromptEncoder on the same plain prompts
  C  PromptEncoder on A1111 prompts: weights, BREAK, and ~150 tokens (two or three chunks)
Reported: median ms per batch of each, and B/A and C/A. The last line is B/A.

    .venv/bin/python bench/prompt_encoding.py            # ~1 min
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402
from sdref import SD15_TEXT  # noqa: E402

from sdbatch.render.text.embeddings import EmbeddingLibrary  # noqa: E402
from sdbatch.render.text.encode import PromptEncoder  # noqa: E402

BATCH = 8


def build_pipeline():
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    from sdbatch.render.tiny.sd15 import build_sd15_pipeline, make_tokenizer

    pipe = build_sd15_pipeline(0)
    tokenizer = make_tokenizer()
    config = CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **SD15_TEXT)
    torch.manual_seed(0)
    return StableDiffusionPipeline(**{**pipe.components, "text_encoder": CLIPTextModel(config).eval()})


def rows(kind: str, round_: int) -> list[dict]:
    if kind == "plain":
        return [{"prompt": f"a photo of a red fox number {round_}-{n}", "negative_prompt": "blurry"}
                for n in range(BATCH)]
    long = "(masterpiece:1.2), a castle on a hill, [foggy], " * 3
    return [{"prompt": f"{long} BREAK fox {round_}-{n}", "negative_prompt": "lowres, (blurry:1.3)"}
            for n in range(BATCH)]


def timed(work, round_: int) -> float:
    started = time.perf_counter()
    with torch.inference_mode():
        work(round_)
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--verbose", action="store_true", help="print every timing")
    args = parser.parse_args()
    torch.set_num_threads(2)
    pipe = build_pipeline()
    encoder = PromptEncoder(pipe, EmbeddingLibrary(None))
    sides = {
        "A diffusers": lambda r: pipe.encode_prompt([x["prompt"] for x in rows("plain", r)], "cpu", 1, True,
                                                    [x["negative_prompt"] for x in rows("plain", r)]),
        "B sdbatch plain": lambda r: encoder.encode(rows("plain", r)),
        "C sdbatch a1111": lambda r: encoder.encode(rows("a1111", r)),
    }
    times: dict[str, list[float]] = {name: [] for name in sides}
    for work in sides.values():
        timed(work, -1)  # warm-up
    for round_ in range(args.rounds):
        order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
        for name in order:
            times[name].append(timed(sides[name], round_))
    median = {name: statistics.median(values) for name, values in times.items()}
    if args.verbose:
        print({name: [round(v) for v in values] for name, values in times.items()})
    for name, value in median.items():
        print(f"{name:18s} {value:8.1f} ms per batch of {BATCH}")
    print(f"C/A: {median['C sdbatch a1111'] / median['A diffusers']:.2f}")
    print(f"B/A: {median['B sdbatch plain'] / median['A diffusers']:.2f}")


if __name__ == "__main__":
    main()
