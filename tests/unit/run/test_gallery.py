"""The gallery without Ray: a synthetic run (committed through the output protocol) for escaping, groups and caps."""

import html
import re
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest

from sdbatch.errors import GalleryError
from sdbatch.output import results
from sdbatch.run.gallery import GallerySettings, make_gallery, spread
from tests.support.runs import INJECTED, synthetic_run


def test_text_is_escaped_and_groups_follow_the_chosen_column(tmp_path):
    store = synthetic_run(tmp_path / "run", 12, failed_every=5)
    page = Path(make_gallery(store, GallerySettings(group_by="group", gpu_hour_price=3))).read_text()
    assert INJECTED not in page and html.escape(INJECTED) in page and "<i>x</i>" not in page
    assert page.count("<section class=group") == 3 and 'data-id="r000005"' in page
    assert "3 group(s) by group" in page
    with pytest.raises(GalleryError, match="'nope' is not a column"):
        make_gallery(store, GallerySettings(group_by="nope"))
    with pytest.raises(GalleryError, match="7 days"):
        make_gallery(store, GallerySettings(expires=8 * 24 * 3600))


def test_a_large_run_makes_a_small_page_that_says_what_it_left_out(tmp_path):
    store = synthetic_run(tmp_path / "run", 50_000, failed_every=10, groups=999)
    started = time.monotonic()
    by_variant = Path(make_gallery(store, GallerySettings(), tmp_path / "variant.html")).read_text()
    by_group = Path(make_gallery(store, GallerySettings(group_by="group"), tmp_path / "group.html")).read_text()
    assert time.monotonic() - started < 30
    assert by_variant.count("<figure class=thumb") == 48 and "showing 48 of 45,000, evenly spaced" in by_variant
    assert "The first 500 of 5,000" in by_variant and by_variant.count("<li class=failure") == 500
    assert by_group.count("<section class=group") == 100 and "899 more groups are not shown" in by_group
    assert len(by_variant) < 200_000 and len(by_group) < 3_000_000  # at most 100 groups x 48 thumbnails


def test_spread_samples_evenly_and_keeps_short_groups_whole():
    assert spread(list(range(10)), 20) == list(range(10))
    assert spread(list(range(100)), 4) == [0, 25, 50, 75]


def test_the_page_is_the_same_from_the_metadata_and_from_the_compacted_files(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "BATCH_ROWS", 700)  # groups and failures span batches
    store = synthetic_run(tmp_path / "run", 3000, failed_every=7, variants=4, shard_size=64)
    settings = GallerySettings(per_group=5, max_failures=20)
    before = Path(make_gallery(store, settings, tmp_path / "before.html")).read_text()
    results.compact(store)
    after = Path(make_gallery(store, settings, tmp_path / "after.html")).read_text()
    made = re.compile(r"made by sdbatch gallery at [^<]*")
    assert made.sub("", before) == made.sub("", after)
    assert before.count("<section class=group") == 4 and before.count("<figure class=thumb") == 20
    assert "The first 20 of 429" in before


def test_thumbnails_are_spread_through_each_group_across_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "BATCH_ROWS", 300)
    store = synthetic_run(tmp_path / "run", 2000, failed_every=5, groups=3, variants=2, shard_size=40)
    page = Path(make_gallery(store, GallerySettings(group_by="group", per_group=7), tmp_path / "g.html")).read_text()
    table = results.read_results(store)
    ok = table.filter(pc.equal(table.column("status"), "ok"))
    sections = re.findall(r'<section class=group id="g\d+"><h2>([^<]*)</h2>(.*?)</section>', page)
    assert [key for key, _ in sections] == list(dict.fromkeys(ok.column("group").to_pylist()))  # first appearance
    for key, body in sections:
        ids = ok.filter(pc.equal(ok.column("group"), key)).column("id").to_pylist()
        assert re.findall(r'alt="([^"]+)"', body) == spread(ids, 7)


def test_the_page_says_whether_the_runs_driver_is_alive(tmp_path):
    from sdbatch.output.heartbeat import Heartbeat

    store = synthetic_run(tmp_path / "run", 12)
    assert "no driver has rendered into this output yet" in Path(make_gallery(store, GallerySettings())).read_text()
    heartbeat = Heartbeat(store, interval=30.0, shards_total=1, shards_before=0)
    heartbeat.start()
    assert "<dt>driver</dt><dd>running (last heartbeat" in Path(make_gallery(store, GallerySettings())).read_text()
    heartbeat.end("stopped", "no actor was ready <b>")
    page = Path(make_gallery(store, GallerySettings())).read_text()
    assert "<dd>stopped " in page and "no actor was ready &lt;b&gt;" in page


def test_where_limits_the_groups_charts_and_failures_to_the_rows_it_selects(tmp_path):
    store = synthetic_run(tmp_path / "run", 300, failed_every=7, groups=3, shard_size=50)
    settings = GallerySettings(group_by="group", per_group=500, where="\"group\" = 'g1' and seed < 150")
    page = Path(make_gallery(store, settings, tmp_path / "g.html")).read_text()
    rows = [n for n in range(300) if n % 3 == 1 and n < 150]
    assert page.count("<section class=group") == 1 and "g1" in page
    assert page.count("<figure class=thumb") == sum(1 for n in rows if n % 7)
    assert f"Failures ({sum(1 for n in rows if n % 7 == 0)})" in page
    assert "Only the rows where" in page and "seed &lt; 150" in page
