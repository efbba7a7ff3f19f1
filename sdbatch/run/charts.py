"""The morning report's charts, as inline SVG (no script, no CDN): images and failures per minute, each actor's busy
time, loads per actor, score histograms; counted in one streaming pass over the results."""

from __future__ import annotations

import collections
import html
import math
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sdbatch.scores import SCORE_RANGES, score_columns

# Bars per histogram: enough to see a score's shape, few enough to read each bar.
HISTOGRAM_BINS = 20
# A run longer than this many minutes is charted in coarser buckets, so a chart keeps a readable number of bars.
MAX_TIME_BARS = 120
WIDTH, HEIGHT, PAD = 560, 160, 28


@dataclass
class RunCharts:
    """What the charts need, added batch by batch (bounded memory: counts per minute, per actor, per bin)."""

    ok_per_minute: collections.Counter = field(default_factory=collections.Counter)
    failed_per_minute: collections.Counter = field(default_factory=collections.Counter)
    busy_seconds: collections.Counter = field(default_factory=collections.Counter)  # actor -> render_seconds
    histograms: dict[str, np.ndarray] = field(default_factory=dict)  # score column -> counts per bin

    def add(self, batch: pa.Table) -> None:
        for status, counter in (("ok", self.ok_per_minute), ("failed", self.failed_per_minute)):
            rows = batch.filter(pc.equal(batch.column("status"), status))
            counter.update(_minutes(rows.column("finished_at")))
        busy = batch.group_by("actor").aggregate([("render_seconds", "sum")]).to_pylist()
        self.busy_seconds.update({r["actor"] or "(none)": r["render_seconds_sum"] or 0.0 for r in busy})
        for name, _ in score_columns():
            if name in SCORE_RANGES and name in batch.column_names:
                low, high = SCORE_RANGES[name]
                values = batch.column(name).drop_null().to_numpy(zero_copy_only=False).astype(np.float64)
                counts = np.histogram(np.clip(values, low, high), bins=HISTOGRAM_BINS, range=(low, high))[0]
                self.histograms[name] = self.histograms.get(name, 0) + counts

    def html(self, loads_per_actor: dict[str, dict[str, int]]) -> str:
        """The charts section; loads come from _SUCCESS.json (the invocation that finished the run)."""
        parts = [_time_chart("images-per-minute", "images per minute", self.ok_per_minute),
                 _time_chart("failures-per-minute", "failures per minute", self.failed_per_minute),
                 _bars("busy-seconds", "seconds in pipeline calls per actor",
                       sorted(self.busy_seconds.items()), "{:.1f}")]
        for kind in ("model", "lora", "controlnet"):
            per_actor = sorted((loads_per_actor or {}).get(kind, {}).items())
            if per_actor:
                parts.append(_bars(f"{kind}-loads", f"{kind} loads per actor (last invocation)", per_actor, "{:g}"))
        for name, counts in self.histograms.items():
            low, high = SCORE_RANGES[name]
            edges = np.linspace(low, high, HISTOGRAM_BINS + 1)
            labels = [f"{edges[n]:.2f}-{edges[n + 1]:.2f}" for n in range(HISTOGRAM_BINS)]
            parts.append(_bars(f"histogram-{name}", f"{name} (values outside {low:g}..{high:g} in the end bins)",
                               list(zip(labels, counts.tolist())), "{:g}"))
        return f'<section id=charts><h2>Charts</h2><div class=charts>{"".join(parts)}</div></section>'


def _minutes(finished_at: pa.ChunkedArray) -> dict[str, int]:
    """Rows per minute ('YYYY-MM-DDTHH:MM', UTC), from their finished_at, counted by Arrow (millions of rows)."""
    minutes = pc.utf8_slice_codeunits(pc.drop_null(finished_at), 0, 16)
    return {count["values"]: count["counts"] for count in pc.value_counts(minutes).to_pylist()}


def _time_chart(name: str, title: str, per_minute: collections.Counter) -> str:
    """Bars per minute from the first to the last minute seen (empty minutes included: a stall shows as a gap)."""
    if not per_minute:
        return _bars(name, title, [], "{:g}")
    minutes = sorted(per_minute)
    start, end = np.datetime64(minutes[0]), np.datetime64(minutes[-1])
    span = int((end - start) / np.timedelta64(1, "m")) + 1
    step = max(1, math.ceil(span / MAX_TIME_BARS))
    buckets = collections.Counter()
    for minute, count in per_minute.items():
        buckets[int((np.datetime64(minute) - start) / np.timedelta64(1, "m")) // step] += count
    label = f"per {step} minutes" if step > 1 else ""
    rows = [(str(start + np.timedelta64(n * step, "m")).replace("T", " "), buckets.get(n, 0))
            for n in range(math.ceil(span / step))]
    return _bars(name, f"{title} {label}".strip(), rows, "{:g}")


def _bars(name: str, title: str, rows: list[tuple[str, float]], number: str) -> str:
    """A bar chart; each bar carries its label and value (data-label, data-value) and a tooltip."""
    if not rows:
        return f'<figure class=chart data-chart="{name}"><figcaption>{_esc(title)}: nothing yet</figcaption></figure>'
    top = max(value for _, value in rows) or 1
    width = (WIDTH - PAD) / len(rows)
    bars = []
    for n, (label, value) in enumerate(rows):
        height = (HEIGHT - PAD) * value / top
        x, y = PAD + n * width, HEIGHT - PAD - height
        shown = number.format(value)
        bars.append(f'<rect class=bar data-label="{_esc(label)}" data-value="{value}" x="{x:.1f}" y="{y:.1f}" '
                    f'width="{max(width - 1, 0.5):.1f}" height="{height:.1f}"><title>{_esc(label)}: {shown}'
                    "</title></rect>")
    axis = (f'<text x="2" y="12" class=axis>{number.format(top)}</text><text x="2" y="{HEIGHT - PAD}" '
            f'class=axis>0</text><text x="{PAD}" y="{HEIGHT - 8}" class=axis>{_esc(rows[0][0])}</text>'
            f'<text x="{WIDTH}" y="{HEIGHT - 8}" text-anchor="end" class=axis>{_esc(rows[-1][0])}</text>')
    return (f'<figure class=chart data-chart="{name}"><figcaption>{_esc(title)}</figcaption>'
            f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{_esc(title)}">{axis}{"".join(bars)}'
            "</svg></figure>")


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


CHART_STYLE = """.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:16px}
.chart svg{width:100%;height:auto;background:#fafafa}.bar{fill:#4a78b5}.bar:hover{fill:#e07b00}
.axis{font-size:11px;fill:#666}figure.chart figcaption{font-size:13px;color:#444}"""
