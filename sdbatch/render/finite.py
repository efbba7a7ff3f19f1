"""Pipeline output that came out NaN or inf: found per row on the device, so that row fails with why."""

from __future__ import annotations

import torch


class NonFiniteOutput(ValueError):
    """A row's latents or image overflowed: the row fails, its batch mates keep their images."""


def finite_rows(batch: torch.Tensor) -> list[bool]:
    """Per row of (N, ...): whether every value is finite. One reduction where the tensor is, and only N
    booleans cross to the host. Not a sum: a float16 sum of an image's pixels overflows by itself."""
    return torch.isfinite(batch).flatten(1).all(dim=1).tolist()


def overflowed(what: str, steps: int, dtype: torch.dtype) -> NonFiniteOutput:
    """The error of a row whose `what` ("the image", "the first pass's latents") came out non-finite."""
    hint = ""
    if dtype == torch.float16:  # bfloat16 has float32's range: what overflows float16 usually fits there
        hint = '; float16 overflows sooner: try [render] dtype = "bfloat16" (or "float32" where the card lacks it)'
    return NonFiniteOutput(f"{what} came out non-finite (NaN/inf) after {steps} steps: something overflowed, "
                           f"most often a large prompt weight, LoRA weight or guidance scale{hint}")
