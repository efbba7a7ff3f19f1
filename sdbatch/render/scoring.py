"""Scores of committed shards: images still in memory from their render, the rest read back from the store."""

from __future__ import annotations

import functools
import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from sdbatch.output.layouts import layout_named
from sdbatch.output.scores import score_table, write_scores
from sdbatch.render.steps.scorer import Scorer
from sdbatch.render.text.native import plain_text
from sdbatch.settings import S3Settings, ScoreSettings
from sdbatch.store.base import Store
from sdbatch.tasks import ShardTask

log = logging.getLogger(__name__)


@dataclass
class ScoredImages:
    """One shard's scores so far, per step then column, in the order of `ids`."""

    ids: list[str] = field(default_factory=list)
    values: dict[str, dict[str, list]] = field(default_factory=dict)

    def extend(self, ids: list[str], scores: dict[str, dict[str, list]]) -> None:
        self.ids += ids
        for step, columns in scores.items():
            for name, column in columns.items():
                self.values.setdefault(step, {}).setdefault(name, []).extend(column)


class ShardScorer:
    """Runs the score steps over a shard's images and writes each step's score file once. Stateful: the Scorer
    (CLIP and the steps' models) loads once and serves many shards."""

    def __init__(self, store: Store, scorer: Scorer):
        self.store, self.scorer = store, scorer

    @property
    def steps(self) -> tuple[str, ...]:
        return tuple(self.scorer.settings.steps)

    def score(self, images: list[Image.Image], rows: list[dict[str, Any]]) -> dict[str, dict[str, list]]:
        """The steps' values for rendered images, with their rows' prompts read as their syntax reads them."""
        prompts = [plain_text(row.get("prompt"), row.get("prompt_syntax")) for row in rows]
        return self.scorer.score(images, prompts)

    def finish(self, shard_id: str, layout: str, rows: list[dict[str, Any]], attempt: str,
               scored: ScoredImages | None = None, steps: tuple[str, ...] | None = None,
               on_device: Callable[[Callable[[], Any]], Any] = lambda work: work()) -> list[str]:
        """Write the shard's score files for `steps` (default: all of the Scorer's). `rows`: the shard's ok result
        rows (id, image) with their prompts; those not in `scored` are read back from the store and scored through
        `on_device` (a Renderer's device thread: only it uses the device). Returns the steps whose files this call
        wrote (another writer's file stands)."""
        steps = self.steps if steps is None else steps
        scored = scored or ScoredImages()
        have = set(scored.ids)
        missing = [row for row in rows if row["id"] not in have]
        # Whether the images were scored as they rendered, read back from the store, or both (adopted rows).
        source = "+".join(name for name, used in (("render", bool(have)), ("store", bool(missing))) if used)
        if missing and steps:
            found = self._read_images(layout, missing)
            for start in range(0, len(missing), self.scorer.settings.batch_size):
                part = missing[start:start + self.scorer.settings.batch_size]
                work = functools.partial(self.score, [found[row["id"]] for row in part], part)
                scored.extend([row["id"] for row in part], on_device(work))
        identity = self.scorer.identity()
        written = []
        for step in steps:
            table = score_table(step, scored.ids, scored.values.get(step, {}))
            if write_scores(self.store, step, shard_id, table, {"attempt": attempt, "scored_at": _now(),
                                                                  "images_from": source or "none", **identity[step]}):
                written.append(step)
        return written

    def _read_images(self, layout: str, rows: list[dict[str, Any]]) -> dict[str, Image.Image]:
        """The rows' images from the store, in any layout: each object their `image` values name, read once."""
        by_ref = {row["image"]: row["id"] for row in rows}
        found: dict[str, Image.Image] = {}
        for key in dict.fromkeys(ref.split("#", 1)[0] for ref in by_ref):
            for image in layout_named(layout).images_in(self.store, key):
                if image.ref in by_ref:
                    found[by_ref[image.ref]] = Image.open(io.BytesIO(image.data)).convert("RGB")
        lost = [row["id"] for row in rows if row["id"] not in found]
        if lost:
            raise FileNotFoundError(f"{len(lost)} committed images are missing from the store (first: {lost[0]})")
        return found


class ShardScores:
    """One shard's images scored during its render, a scoring batch at a time. A step that fails does not fail the
    shard's images: `scored` becomes None and the files are left to the run's end, or `sdbatch score`."""

    def __init__(self, scorer: Callable[[], ShardScorer], batch_size: int):
        self._scorer, self._batch_size = scorer, batch_size
        self.scored: ScoredImages | None = ScoredImages()
        self._waiting: list[tuple[dict[str, Any], Image.Image]] = []

    def add(self, row: dict[str, Any], image: Image.Image) -> None:
        self._waiting.append((row, image))
        if len(self._waiting) >= self._batch_size:
            self.close()

    def close(self) -> None:
        waiting, self._waiting = self._waiting, []
        if not waiting or self.scored is None:
            return
        rows = [row for row, _ in waiting]
        try:
            values = self._scorer().score([image for _, image in waiting], rows)
        except Exception as exc:
            log.warning("scoring failed (%s: %s); the run's end scores these images again", type(exc).__name__, exc)
            self.scored = None
            return
        self.scored.extend([row["id"] for row in rows], values)


class RenderScores:
    """A Renderer's score steps: a ShardScores per shard it renders, the score files written after its commit. The
    steps' models load with the first shard to score: a run without steps never loads them."""

    def __init__(self, store: Store, settings: ScoreSettings, device: Any, s3: S3Settings | None):
        self.store, self.settings, self.device, self.s3 = store, settings, device, s3
        self._scorer: ShardScorer | None = None

    def begin(self) -> ShardScores | None:
        return ShardScores(self.scorer, self.settings.batch_size) if self.settings.steps else None

    def scorer(self) -> ShardScorer:
        if self._scorer is None:
            self._scorer = ShardScorer(self.store, Scorer(self.settings, self.device, self.s3))
        return self._scorer

    def write(self, task: ShardTask, results: list[dict], scores: ShardScores,
              on_device: Callable[[Callable[[], Any]], Any] = lambda work: work()) -> None:
        """After the commit: images rendered here were scored as they rendered, adopted ones are read back and
        scored through `on_device`."""
        if scores.scored is None:
            return
        rows = {row["id"]: row for row in task.rows}
        ok = [{**rows[r["id"]], **r} for r in results if r["status"] == "ok"]
        try:
            scorer = on_device(self.scorer)  # loads the steps' models on the device thread if not yet loaded
            scorer.finish(task.shard_id, task.layout, ok, task.attempt, scores.scored, on_device=on_device)
        except Exception as exc:
            log.warning("shard %s: scores not written (%s: %s); the run's end scores it again", task.shard_id,
                        type(exc).__name__, exc)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
