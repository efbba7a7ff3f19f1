"""The morning report's charts: counts per minute (gaps kept), busy time per actor, loads, score histograms."""

from __future__ import annotations

import re

import pyarrow as pa

from sdbatch.run.charts import HISTOGRAM_BINS, RunCharts


def _batch(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=pa.schema([
        ("status", pa.string()), ("finished_at", pa.string()), ("actor", pa.string()),
        ("render_seconds", pa.float64()), ("clip_score", pa.float32())]))


def _values(page: str, chart: str) -> list[tuple[str, float]]:
    figure = re.search(rf'<figure class=chart data-chart="{chart}">(.*?)</figure>', page).group(1)
    return [(label, float(value)) for label, value in re.findall(r'data-label="([^"]*)" data-value="([^"]*)"', figure)]


def test_charts_count_per_minute_with_gaps_per_actor_and_per_bin_across_batches():
    charts = RunCharts()
    charts.add(_batch([
        {"status": "ok", "finished_at": "2026-12-07T10:00:05Z", "actor": "a", "render_seconds": 1.5, "clip_score": 0.3},
        {"status": "ok", "finished_at": "2026-12-07T10:00:50Z", "actor": "b", "render_seconds": 2.0, "clip_score": 0.31},
        {"status": "failed", "finished_at": "2026-12-07T10:01:00Z", "actor": "a", "render_seconds": 0.5,
         "clip_score": None}]))
    charts.add(_batch([
        {"status": "ok", "finished_at": "2026-12-07T10:03:10Z", "actor": "a", "render_seconds": 1.0, "clip_score": 7.0},
    ]))
    page = charts.html({"model": {"a": 1, "b": 2}, "lora": {}, "controlnet": {}})
    assert _values(page, "images-per-minute") == [("2026-12-07 10:00", 2), ("2026-12-07 10:01", 0),
                                                  ("2026-12-07 10:02", 0), ("2026-12-07 10:03", 1)]
    assert _values(page, "failures-per-minute") == [("2026-12-07 10:01", 1)]
    assert _values(page, "busy-seconds") == [("a", 3.0), ("b", 2.0)]
    assert _values(page, "model-loads") == [("a", 1), ("b", 2)] and 'data-chart="lora-loads"' not in page
    histogram = _values(page, "histogram-clip_score")
    assert len(histogram) == HISTOGRAM_BINS and sum(v for _, v in histogram) == 3  # the null is not counted
    assert histogram[-1][1] == 1  # 7.0 is past the cosine's range: the last bin holds it
    assert dict(histogram)["0.30-0.40"] == 2


def test_a_long_run_is_charted_in_coarser_buckets_and_an_empty_one_says_so():
    charts = RunCharts()
    charts.add(_batch([{"status": "ok", "finished_at": f"2026-12-07T{10 + m // 60:02d}:{m % 60:02d}:00Z",
                        "actor": "a", "render_seconds": 1.0, "clip_score": 0.0} for m in range(0, 600, 7)]))
    bars = _values(charts.html({}), "images-per-minute")
    assert len(bars) <= 120 and sum(v for _, v in bars) == len(range(0, 600, 7))
    assert "nothing yet" in RunCharts().html({})
