"""A shard's output driven as the Renderer drives it, without torch: rows, their rendered images, an attempt."""

from __future__ import annotations

from PIL import Image

from sdbatch.output.layouts import layout_named
from sdbatch.output.layouts.layout import Outcome
from sdbatch.output.records import RenderedRow
from sdbatch.output.uploads import Uploads
from sdbatch.tasks import ShardTask

PROVENANCE = {"model_hash": "cafe", "device": "cpu (test)", "dtype": "float32", "versions": "{}", "actor": "t"}


def rows(count: int, **extra) -> tuple[dict, ...]:
    return tuple({"id": f"r{n}", "prompt": f"a tiny cat {n}", "negative_prompt": "", "seed": 10 + n, "steps": 2,
                  "guidance_scale": 5.0, "scheduler": None, "model": "tiny:sd15", "width": 16, "height": 8,
                  "label": f"cat{n}", **extra} for n in range(count))


def rendered(row: dict, fails: bool = False) -> RenderedRow:
    """The row rendered as a flat image whose colour is its seed, or failed."""
    if fails:
        return RenderedRow(row, None, "ValueError: boom", 0.0, 1, 0, 0)
    image = Image.new("RGB", (row["width"], row["height"]), (row["seed"] % 256, 0, 0))
    return RenderedRow(row, image, None, 0.25, 2, row["width"], row["height"], "EulerDiscreteScheduler")


def attempt(store, layout: str, shard: str, name: str, task_rows: tuple[dict, ...], failing: set[str] = frozenset(),
            race=None) -> Outcome:
    """One attempt at a shard in `layout`: `race` (another whole attempt, say) runs once this one has looked at the
    store and before it renders; then what the layout leaves to render is rendered (rows in `failing` fail) and
    the attempt finishes."""
    task = ShardTask(shard, name, task_rows, "png", 95, layout=layout)
    uploads = Uploads(store, 2)
    try:
        output = layout_named(layout).shard(task, store, uploads, PROVENANCE)
        if race is not None:
            race()
        for row in output.to_render() or []:
            output.add(rendered(row, row["id"] in failing), PROVENANCE)
        return output.finish()
    finally:
        uploads.close()
