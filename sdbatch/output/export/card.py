"""The dataset card (README.md): YAML front matter that `datasets` and the Hub read (configs, features, counts),
then what the run made: its models, settings, counts and each score's distribution."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml

from sdbatch.output.export.protocol import SPLIT, Written
from sdbatch.output.export.source import Source
from sdbatch.scores import score_columns
from sdbatch.version import __version__

CARD_KEY = "README.md"
SETTINGS = ("model", "steps", "guidance_scale", "scheduler", "size")  # size: width x height
# Distinct values counted per setting; past it the rest count as other, so a near-unique column stays small.
MAX_DISTINCT = 1000
SHOWN = 10  # values listed per setting, the most common first
# Score values kept for the quartiles: past twice this every other one is dropped (an even sample of the run).
SAMPLE = 100_000
OTHER = "(other)"


class Distribution:
    """min, mean, max of every value; quartiles from an evenly spaced sample of at most 2 * SAMPLE values."""

    def __init__(self) -> None:
        self.count, self.total, self.low, self.high = 0, 0.0, math.inf, -math.inf
        self.kept: list[np.ndarray] = []
        self.stride, self.seen = 1, 0

    def add(self, column: pa.ChunkedArray) -> None:
        values = column.drop_null().to_numpy().astype(np.float64)
        values = values[np.isfinite(values)]
        if not len(values):
            return
        self.count += len(values)
        self.total += float(values.sum())
        self.low, self.high = min(self.low, float(values.min())), max(self.high, float(values.max()))
        # Keep the values at positions that are multiples of the stride, counted over the whole stream.
        self.kept.append(values[(-self.seen) % self.stride::self.stride])
        self.seen += len(values)
        if sum(len(part) for part in self.kept) > 2 * SAMPLE:
            self.kept, self.stride = [np.concatenate(self.kept)[::2]], self.stride * 2

    def merge(self, other: Distribution) -> None:
        """Another stream's values as if they had followed this one's: both samples at the coarser stride."""
        if not other.count:
            return
        stride = max(self.stride, other.stride)
        kept = [part[::stride // dist.stride] for dist in (self, other) for part in dist.kept]
        self.count, self.total = self.count + other.count, self.total + other.total
        self.low, self.high = min(self.low, other.low), max(self.high, other.high)
        self.kept, self.stride, self.seen = kept, stride, self.seen + other.seen
        while sum(len(part) for part in self.kept) > 2 * SAMPLE:
            self.kept, self.stride = [np.concatenate(self.kept)[::2]], self.stride * 2

    def summary(self) -> dict[str, float] | None:
        if not self.count:
            return None
        q1, q2, q3 = np.quantile(np.concatenate(self.kept), [0.25, 0.5, 0.75])
        return {"min": self.low, "mean": self.total / self.count, "25%": float(q1), "50%": float(q2),
                "75%": float(q3), "max": self.high}


class Stats:
    """What the card says of the exported rows, gathered a chunk at a time."""

    def __init__(self) -> None:
        self.rows = 0
        self.settings: dict[str, Counter] = {name: Counter() for name in SETTINGS}
        self.scores: dict[str, Distribution] = {}

    def add(self, table: pa.Table) -> None:
        self.rows += table.num_rows
        for name in SETTINGS:
            values = _setting(table, name)
            if values is not None:
                self._count(self.settings[name], values)
        for name, kind in score_columns():
            if name in table.column_names and (pa.types.is_floating(kind) or pa.types.is_integer(kind)):
                self.scores.setdefault(name, Distribution()).add(table.column(name))

    def merge(self, other: Stats) -> None:
        """Another window's rows, as if added here after this one's."""
        self.rows += other.rows
        for name, counter in other.settings.items():
            mine = self.settings[name]
            for value, count in counter.most_common():
                mine[value if value in mine or len(mine) < MAX_DISTINCT else OTHER] += count
        for name, dist in other.scores.items():
            self.scores.setdefault(name, Distribution()).merge(dist)

    @staticmethod
    def _count(counter: Counter, values: pa.ChunkedArray) -> None:
        for pair in pc.value_counts(values).to_pylist():
            value = "(none)" if pair["values"] is None else str(pair["values"])
            key = value if value in counter or len(counter) < MAX_DISTINCT else OTHER
            counter[key] += pair["counts"]


def _setting(table: pa.Table, name: str) -> pa.ChunkedArray | None:
    if name == "size":
        if "width" not in table.column_names or "height" not in table.column_names:
            return None
        return pc.binary_join_element_wise(pc.cast(table["width"], pa.string()),
                                           pc.cast(table["height"], pa.string()), "x")
    return table.column(name) if name in table.column_names else None


def dataset_card(stats: Stats, source: Source, format_name: str, data_files: str, written: Written) -> str:
    front = {
        "configs": [{"config_name": "default", "data_files": [{"split": SPLIT, "path": data_files}]}],
        "dataset_info": {
            **({"features": written.features} if written.features else {}),
            # num_bytes: the data files' bytes (images as stored), the size a user downloads.
            "splits": [{"name": SPLIT, "num_bytes": written.bytes, "num_examples": stats.rows}],
            "download_size": written.bytes, "dataset_size": written.bytes},
        "task_categories": ["text-to-image"],
        "tags": ["sdbatch", "synthetic", "image"],
    }
    head = yaml.safe_dump(front, sort_keys=False, allow_unicode=True)
    return "\n".join(["---", head.rstrip("\n"), "---", *_body(stats, source, format_name, data_files), ""])


def _body(stats: Stats, source: Source, format_name: str, data_files: str) -> list[str]:
    run = source.job.get("run_fingerprint", "unknown")
    lines = ["# Images rendered by sdbatch", "",
             f"{stats.rows} images with their prompts, settings, labels and scores, rendered by sdbatch "
             f"(run `{run}`) and exported as {format_name} by sdbatch {__version__}.", "",
             "## Counts", "", "| rows | count |", "| --- | ---: |",
             f"| committed in the run | {source.rows_seen} |", f"| failed (not exported) | {source.rows_failed} |"]
    if source.where is not None:
        lines.append(f"| left out by the filter `{_cell(str(source.where))}` | {source.rows_filtered} |")
    if source.images_missing:
        lines.append(f"| image missing from the output | {source.images_missing} |")
    lines += [f"| exported | {stats.rows} |", ""]
    lines += _settings(stats)
    lines += _scores(stats)
    lines += ["## Loading", "", "```python", "from datasets import load_dataset", "",
              f'dataset = load_dataset("path/to/this/folder/or/hub/repo", split="{SPLIT}")',
              f"# the files alone: {data_files}", "```"]
    return lines


def _settings(stats: Stats) -> list[str]:
    lines = ["## Models and settings", ""]
    for name, counter in stats.settings.items():
        if counter:
            shown = ", ".join(f"`{_cell(value)}` ({count})" for value, count in counter.most_common(SHOWN))
            more = f", and {len(counter) - SHOWN} more" if len(counter) > SHOWN else ""
            lines.append(f"- **{name}**: {shown}{more}")
    return [*lines, ""]


def _scores(stats: Stats) -> list[str]:
    summaries = {name: summary for name, dist in stats.scores.items() if (summary := dist.summary())}
    if not summaries:
        return []
    lines = ["## Scores", "", "| score | images scored | min | mean | 25% | 50% | 75% | max |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, summary in summaries.items():
        values = " | ".join(f"{value:.4g}" for value in summary.values())
        lines.append(f"| {name} | {stats.scores[name].count} | {values} |")
    return [*lines, ""]


def _cell(text: Any) -> str:
    """Text a Markdown table cell and an inline code span hold: one line, no pipe or backtick, not too long."""
    flat = " ".join(str(text).split()).replace("|", "/").replace("`", "'")
    return flat if len(flat) <= 120 else flat[:119] + "…"
