"""Label columns (every column normalize does not read): names the results use are refused, names that look
like a setting are pointed out, since a label is carried along and never applied."""

from __future__ import annotations

import difflib
import re
from typing import Any

from sdbatch.manifest.controlnets import SIMPLE_CONTROLNET_COLUMNS
from sdbatch.manifest.guidance import GUIDANCE_COLUMNS
from sdbatch.manifest.images import IMAGE_COLUMNS
from sdbatch.manifest.problems import Notes, Problems
from sdbatch.output.commits import RESULT_SCHEMA
from sdbatch.scores import score_columns

# The columns `normalize` writes, in order (GUIDANCE_COLUMNS where a row or the job sets them); every other column
# of its output is a label.
MANIFEST_COLUMNS = ("id", "prompt", "negative_prompt", "seed", "steps", "guidance_scale", "width", "height",
                    "scheduler", "model", "vae", "loras", "controlnets", "prompt_syntax", "clip_skip", *IMAGE_COLUMNS,
                    *GUIDANCE_COLUMNS)
# Columns only the results table has: read_results joins them onto the manifest's, so a label of the same
# name would be shadowed.
RESULT_COLUMNS = tuple(name for name in RESULT_SCHEMA.names if name not in MANIFEST_COLUMNS)
# The score steps' columns, which read_results adds beside the results' (sdbatch.scores).
SCORE_COLUMNS = tuple(name for name, _ in score_columns())
# Every name normalize reads as a setting.
SETTING_COLUMNS = (*MANIFEST_COLUMNS, *SIMPLE_CONTROLNET_COLUMNS, "schedule")
# What A1111, ComfyUI and diffusers call the settings, as people name their columns after them.
ALIASES = {
    "cfg": "guidance_scale", "cfg_scale": "guidance_scale", "num_inference_steps": "steps", "sampler": "scheduler",
    "sampler_name": "scheduler", "schedule_type": "schedule", "negative": "negative_prompt",
    "neg_prompt": "negative_prompt", "denoising_strength": "strength", "denoise": "strength", "lora": "loras",
    "checkpoint": "model", "model_name": "model", "sd_model_checkpoint": "model", "hr_scale": "hires_scale",
    "hr_second_pass_steps": "hires_steps", "hr_upscaler": "hires_upscaler", "init_images": "init_image",
    "mask": "mask_image", "clip_skip_layers": "clip_skip", "controlnet_model": "controlnet",
    "distilled_cfg_scale": "guidance_scale", "t5_max_length": "max_sequence_length",
}
LABEL_WARNING = ("{count} label column(s) look like a setting but are kept as labels, which nothing reads; "
                 "rename them if they were meant as settings")


def check_label_names(labels: dict[str, Any], problems: Problems, notes: Notes) -> None:
    for name in labels:
        if name in RESULT_COLUMNS or name in SCORE_COLUMNS:
            problems.add(name, None, "is a name the results table uses; rename this label column")
    meant = [(name, setting) for name in labels if (setting := meant_setting(name))]
    notes.add(LABEL_WARNING, len(meant), [f"{name!r}: did you mean {setting!r}?" for name, setting in meant])


def meant_setting(name: str) -> str | None:
    """The setting a label's name probably meant: the same name in other case or spelling, an alias, a typo."""
    key = re.sub(r"[\s\-]+", "_", name.strip()).lower()
    if key in SETTING_COLUMNS or key in ALIASES:
        return ALIASES.get(key, key)
    close = difflib.get_close_matches(key, SETTING_COLUMNS, n=1, cutoff=0.85)
    return close[0] if close else None
