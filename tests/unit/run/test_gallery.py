"""The gallery without Ray: a synthetic run (committed through the output protocol) for escaping, groups and caps."""

import html
import random
import re
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest

from sdbatch.errors import GalleryError
from sdbatch.output import results
from sdbatch.output.scores import score_table, write_scores
from sdbatch.run import duplicates_section
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


# --- near-duplicates: phash score files written for a synthetic run, with groups planted


def _with_phash(store, hashes: dict[str, str | None]) -> None:
    """Score files for the phash step: each shard's ids in `hashes` (None: scored, no value); others unscored."""
    table = results.read_results(store).select(["id", "shard"]).to_pylist()
    for shard in sorted({row["shard"] for row in table}):
        ids = [row["id"] for row in table if row["shard"] == shard and row["id"] in hashes]
        write_scores(store, "phash", shard, score_table("phash", ids, {"phash": [hashes[i] for i in ids]}), {})


def _far(n: int) -> str:
    """Hashes that are no near-duplicates of one another (a chance of about 1e-10 per pair)."""
    return f"{random.Random(n).getrandbits(64):016x}"


def _near(value: str, bits: list[int]) -> str:
    number = int(value, 16)
    for bit in bits:
        number ^= 1 << bit
    return f"{number:016x}"


def _dup_section(page: str) -> list[list[str]]:
    """The groups the near-duplicates section shows, each as its thumbnails' ids."""
    blocks = re.findall(r'<div class=dup-group id="dup-(\d+)"><h3>dup group (\d+) \((\d+) images\)</h3>'
                        r"<div class=dups>(.*?)</div>", page)
    assert all(a == b for a, b, _, _ in blocks) and [int(a) for a, *_ in blocks] == list(range(1, len(blocks) + 1))
    return [re.findall(r'<figure class=dup-thumb><a href="[^"]+"><img src="[^"]+" loading="lazy" alt="([^"]+)">',
                       body) for *_, body in blocks]


def _marked(page: str) -> dict[str, int]:
    """Each grid thumbnail's group, by id, from its data-dup-group (and the label beside it)."""
    figures = re.findall(r'<figure class=thumb([^>]*)>.*?alt="([^"]+)".*?</figure>', page)
    marked = {}
    for attributes, row_id in figures:
        found = re.search(r'data-dup-group="(\d+)"', attributes)
        if found:
            marked[row_id] = int(found.group(1))
    return marked


PLANTED = {"r000003": _far(1), "r000017": _near(_far(1), [0, 9, 18, 27, 36]),  # 5 bits apart
           "r000030": _near(_far(1), [0, 9, 18, 27, 36, 45, 50, 55, 60, 63]),  # 5 from r000017, 10 from r000003
           "r000010": _far(2), "r000011": _far(2).upper(),  # the same hash
           "r000020": _far(3), "r000021": _near(_far(3), list(range(9)))}  # 9 bits apart: not near-duplicates


def test_near_duplicates_are_the_planted_groups_in_page_order_and_marked_in_the_grid(tmp_path):
    store = synthetic_run(tmp_path / "run", 40, groups=2, shard_size=8)
    hashes = {f"r{n:06d}": _far(100 + n) for n in range(40)} | PLANTED
    hashes |= {"r000005": None, "r000006": "not a hash", "r000007": hashes["r000003"][:-1]}
    del hashes["r000008"]  # no score for it at all
    _with_phash(store, hashes)
    page = Path(make_gallery(store, GallerySettings(), tmp_path / "g.html")).read_text()
    expected = [["r000003", "r000017", "r000030"], ["r000010", "r000011"]]
    assert _dup_section(page) == expected
    assert '<span id=dup-count>2</span> group(s) holding <span id=dup-images>5</span> images' in page
    assert "among the 36 thumbnails shown that have a phash" in page and "at most 8 of 64 bits apart" in page
    assert _marked(page) == {i: n for n, group in enumerate(expected, 1) for i in group}
    assert page.count("<span class=dup><a href=\"#dup-1\">dup group 1</a></span>") == 3
    assert page.index("<section id=duplicates>") < page.index("<section class=group")
    # Grouped by the label column, the page shows g0's (even) rows first: groups and members follow the page.
    by_group = Path(make_gallery(store, GallerySettings(group_by="group"), tmp_path / "by.html")).read_text()
    assert _dup_section(by_group) == [["r000010", "r000011"], ["r000030", "r000003", "r000017"]]
    results.compact(store)  # the compacted files carry the phash column too
    assert _dup_section(Path(make_gallery(store, GallerySettings(), tmp_path / "c.html")).read_text()) == expected


def test_only_the_thumbnails_shown_are_grouped_and_a_page_without_phash_has_no_section(tmp_path):
    plain = synthetic_run(tmp_path / "plain", 40, failed_every=5)
    page = Path(make_gallery(plain, GallerySettings(), tmp_path / "plain.html")).read_text()
    assert "Near-duplicates" not in page and "data-dup-group" not in page and "dup group" not in page
    store = synthetic_run(tmp_path / "run", 40, failed_every=5)  # r000000, r000005, ... failed: never shown
    hashes = {f"r{n:06d}": _far(100 + n) for n in range(40)}
    hashes |= {"r000006": _far(7), "r000021": _far(7),  # both shown
               "r000001": _far(8), "r000002": _far(8),  # r000002 is shown only when the whole group is
               "r000011": _far(9), "r000010": _far(9)}  # r000010 failed
    _with_phash(store, hashes)
    sampled = Path(make_gallery(store, GallerySettings(per_group=8), tmp_path / "g.html")).read_text()
    shown = ["r000001", "r000006", "r000011", "r000016", "r000021", "r000026", "r000031", "r000036"]
    assert re.findall(r'<figure class=thumb[^>]*>.*?alt="([^"]+)"', sampled) == shown  # every 4th of 32 ok rows
    assert _dup_section(sampled) == [["r000006", "r000021"]] and _marked(sampled) == {"r000006": 1, "r000021": 1}
    assert "among the 8 thumbnails shown that have a phash" in sampled
    whole = Path(make_gallery(store, GallerySettings(), tmp_path / "all.html")).read_text()
    assert _dup_section(whole) == [["r000001", "r000002"], ["r000006", "r000021"]]
    assert "among the 32 thumbnails shown" in whole
    where = GallerySettings(where="id <> 'r000021'")
    assert _dup_section(Path(make_gallery(store, where, tmp_path / "w.html")).read_text()) == [["r000001", "r000002"]]


def test_a_phash_column_without_groups_says_so_and_one_without_values_shows_nothing(tmp_path):
    store = synthetic_run(tmp_path / "run", 20)
    _with_phash(store, {f"r{n:06d}": _far(100 + n) for n in range(20)})
    page = Path(make_gallery(store, GallerySettings(), tmp_path / "g.html")).read_text()
    assert "<span id=dup-count>0</span> group(s)" in page and "among the 20 thumbnails" in page
    assert _dup_section(page) == [] and "data-dup-group" not in page
    unhashed = synthetic_run(tmp_path / "unhashed", 20)
    _with_phash(unhashed, {f"r{n:06d}": None for n in range(10)})  # scored, no value
    page = Path(make_gallery(unhashed, GallerySettings(), tmp_path / "u.html")).read_text()
    assert "Near-duplicates" not in page and "dup group" not in page and page.count("<figure class=thumb") == 20


def test_groups_past_the_cap_are_counted_and_still_marked_in_the_grid(tmp_path, monkeypatch):
    monkeypatch.setattr(duplicates_section, "MAX_SHOWN_GROUPS", 2)
    monkeypatch.setattr(duplicates_section, "MAX_SHOWN_MEMBERS", 3)
    store = synthetic_run(tmp_path / "run", 30)
    hashes = {f"r{n:06d}": _far(100 + n) for n in range(30)}
    hashes |= {f"r{n:06d}": _far(1) for n in (2, 4, 6, 8, 10)} | {"r000003": _far(2), "r000005": _far(2)}
    hashes |= {"r000020": _far(3), "r000029": _near(_far(3), [63])}
    _with_phash(store, hashes)
    page = Path(make_gallery(store, GallerySettings(), tmp_path / "g.html")).read_text()
    assert _dup_section(page) == [["r000002", "r000004", "r000006"], ["r000003", "r000005"]]
    assert "dup group 1 (5 images)" in page and "and 2 more, marked dup group 1 below" in page
    assert "<span id=dup-count>3</span> group(s) holding <span id=dup-images>9</span> images" in page
    assert "1 more group(s) are not shown here (the first 2)" in page
    assert _marked(page) == {**{f"r{n:06d}": 1 for n in (2, 4, 6, 8, 10)}, "r000003": 2, "r000005": 2,
                             "r000020": 3, "r000029": 3}
    assert "<span class=dup>dup group 3</span>" in page and 'href="#dup-3"' not in page


def test_the_section_escapes_ids_and_links():
    rows = [{"id": f'{INJECTED}{n}', "image": f'images/0/"{n}".png', "phash": "00000000000000ff"} for n in range(2)]
    dups = duplicates_section.DupGroups.of(rows)
    page = duplicates_section.dup_section(dups, lambda key: f"https://x/{key}?a=1&b=2")
    assert INJECTED not in page and html.escape(INJECTED) in page and "<b" not in page
    assert 'href="https://x/images/0/&quot;0&quot;.png?a=1&amp;b=2"' in page
    assert dups.marker(rows[1]) == (' data-dup-group="1"', '<br><span class=dup><a href="#dup-1">dup group 1</a></span>')
