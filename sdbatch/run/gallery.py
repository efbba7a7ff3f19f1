"""Morning report: one static HTML contact sheet of a run: totals, charts, near-duplicates, thumbnails by group
(sortable and filterable by score), failures."""

from __future__ import annotations

import html
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sdbatch.errors import GalleryError
from sdbatch.output.heartbeat import describe, read_progress
from sdbatch.output.job import SUCCESS_KEY, run_counts, run_layout
from sdbatch.output.results import scan_results
from sdbatch.plan.shards import Variant, group_by_variant
from sdbatch.run.charts import CHART_STYLE, RunCharts
from sdbatch.run.duplicates_section import DUP_STYLE, DupGroups, dup_section
from sdbatch.scores import SCORE_RANGES
from sdbatch.store.base import Store

GALLERY_KEY = "gallery.html"
MAX_EXPIRES = 7 * 24 * 3600  # SigV4 presigned URLs live at most 7 days
CONTENT_TYPES = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp", "html": "text/html; charset=utf-8"}
Link = Callable[[str], str]  # image key (relative to the output) -> URL the page uses
THUMB_COLUMNS = ["id", "prompt", "seed", "image", "width", "height"]
# Distinct groups counted beyond those shown: a near-unique column must not hold every value in memory.
MAX_COUNTED_GROUPS = 100_000


@dataclass(frozen=True)
class GallerySettings:
    # None groups by variant (model, size, steps, scheduler, guidance, LoRAs, ControlNets).
    group_by: str | None = None
    # A few screens per group on a phone, spread through the group so it is a fair sample.
    per_group: int = 48
    # Grouping by a near-unique column must not make a section per image.
    max_groups: int = 100
    # Enough to see the pattern; all of them are in read_results().
    max_failures: int = 500
    # None: no cost line.
    gpu_hour_price: float | None = None
    # Lifetime of presigned S3 links; the most SigV4 allows, so a morning report lasts the week.
    expires: int = MAX_EXPIRES
    # A SQL WHERE clause over the results (e.g. "clip_score > 0.25"): only those rows are charted and shown.
    where: str | None = None

    def check(self) -> GallerySettings:
        if not 1 <= self.expires <= MAX_EXPIRES:
            raise GalleryError(f"--expires {self.expires}: use 1..{MAX_EXPIRES} seconds (7 days, the most S3 allows)")
        if self.per_group < 1 or self.max_groups < 1:
            raise GalleryError("--per-group and --max-groups must be at least 1")
        if self.gpu_hour_price is not None and self.gpu_hour_price < 0:
            raise GalleryError(f"--gpu-hour-price {self.gpu_hour_price} is negative; give a price >= 0")
        return self


def make_gallery(store: Store, settings: GallerySettings, out: Path | None = None) -> str:
    """Write the gallery (OUTPUT/gallery.html, or out) and return where it is."""
    settings = settings.check()
    folder = store.local_folder()
    at_root = out is None or (folder is not None and Path(out).resolve().parent == Path(folder).resolve())
    page = render(store, settings, links(store, at_root, settings.expires))
    if out is None:
        store.put(GALLERY_KEY, page.encode())
        return store.url_for(GALLERY_KEY)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return str(out)


def links(store: Store, at_root: bool, expires: int) -> Link:
    """Relative keys beside a local output; else the store's links for a browser (file URLs, presigned GETs)."""
    if at_root and store.local_folder() is not None:
        return lambda key: quote(key)
    return lambda key: store.browser_url(key, expires, CONTENT_TYPES.get(key.rsplit(".", 1)[-1]))


def render(store: Store, settings: GallerySettings, link: Link) -> str:
    """The page from two streaming passes over the results: what there is, then the rows shown."""
    counts = run_counts(store)
    success = json.loads(store.get(SUCCESS_KEY)) if store.exists(SUCCESS_KEY) else {}
    seen = _survey(store, settings)
    browsable = run_layout(store).browsable(store)

    def thumb(ref: str) -> str:  # an image's link, in the near-duplicates and the groups alike
        return link(browsable(ref))

    shown = _shown(store, settings, seen)
    dups = DupGroups.of([row for rows in shown.values() for row in rows])  # only the thumbnails shown
    parts = [_head(store.uri), _totals(seen, counts, success, settings, store),
             seen.charts.html(success.get("loads_per_actor", {})), _toc(seen, settings), dup_section(dups, thumb),
             _score_controls(seen.scores), _groups(shown, seen, settings, thumb, dups), _failures(seen, settings),
             "</body></html>\n"]
    return "\n".join(parts)


@dataclass
class _Survey:
    """What the first pass learns: totals, the groups in order of first appearance, the first failures."""

    seconds: float = 0.0
    devices: set = field(default_factory=set)
    groups: dict[str, int] = field(default_factory=dict)  # the first max_groups groups: ok rows each
    others: set = field(default_factory=set)  # keys of further groups, up to MAX_COUNTED_GROUPS
    failed: int = 0
    failures: list[dict] = field(default_factory=list)
    charts: RunCharts = field(default_factory=RunCharts)
    scores: list[str] = field(default_factory=list)  # the numeric score columns the run has
    phash: list[str] = field(default_factory=list)  # ["phash"] when the run has that column: near-duplicates


def _survey(store: Store, settings: GallerySettings) -> _Survey:
    seen, keys = _Survey(), _GroupKeys(settings.group_by)
    for batch in scan_results(store, where=settings.where):
        seen.charts.add(batch)
        seen.scores = [name for name in SCORE_RANGES if name in batch.column_names]
        seen.phash = ["phash"] if "phash" in batch.column_names else []
        seen.seconds += pc.sum(batch.column("render_seconds")).as_py() or 0.0
        seen.devices.update(d for d in pc.unique(batch.column("device")).to_pylist() if d)
        failed = batch.filter(pc.equal(batch.column("status"), "failed"))
        seen.failed += failed.num_rows
        room = settings.max_failures - len(seen.failures)
        seen.failures += failed.select(["id", "prompt", "error"]).slice(0, max(room, 0)).to_pylist()
        ok = batch.filter(pc.equal(batch.column("status"), "ok"))
        for count in pc.value_counts(keys.of(ok)).to_pylist():
            key, n = count["values"], count["counts"]
            if key in seen.groups or len(seen.groups) < settings.max_groups:
                seen.groups[key] = seen.groups.get(key, 0) + n
            elif len(seen.others) < MAX_COUNTED_GROUPS:
                seen.others.add(key)
    return seen


def _shown(store: Store, settings: GallerySettings, seen: _Survey) -> dict[str, list[dict]]:
    """The rows shown per group: evenly spaced through it (`spread` of its ordinals)."""
    names = pa.array(list(seen.groups), pa.string())
    wanted = [np.array(spread(list(range(count)), settings.per_group)) for count in seen.groups.values()]
    passed = np.zeros(len(names), dtype=np.int64)  # ok rows of each group before this batch
    shown: dict[str, list[dict]] = {key: [] for key in seen.groups}
    keys = _GroupKeys(settings.group_by)
    for batch in scan_results(store, where=settings.where):
        ok = batch.filter(pc.equal(batch.column("status"), "ok"))
        group = pc.fill_null(pc.index_in(keys.of(ok), value_set=names), -1).to_numpy(zero_copy_only=False)
        for n, key in enumerate(seen.groups):
            rows = np.flatnonzero(group == n)
            picked = rows[np.isin(passed[n] + np.arange(len(rows)), wanted[n])]
            passed[n] += len(rows)
            if len(picked):
                shown[key] += ok.select(THUMB_COLUMNS + seen.scores + seen.phash).take(pa.array(picked)).to_pylist()
    return shown


class _GroupKeys:
    """Each row's group: a column's value, or its variant's description (worked out once per variant)."""

    def __init__(self, group_by: str | None) -> None:
        self.group_by = group_by
        self.described: dict[Variant, str] = {}

    def of(self, rows: pa.Table) -> pa.Array:
        if self.group_by is not None:
            if self.group_by not in rows.column_names:
                raise GalleryError(f"--group-by {self.group_by!r} is not a column of this run; use one of "
                                   f"{', '.join(rows.column_names)}")
            return pc.fill_null(pc.cast(rows.column(self.group_by), pa.string()), "(none)")
        codes, variants = group_by_variant(rows)
        names = [self.described.setdefault(variant, variant.describe()) for variant in variants]
        return pc.take(pa.array(names, pa.string()), pa.array(codes))


def spread(positions: list[int], k: int) -> list[int]:
    """k positions evenly spaced through the list (all of them if there are no more than k)."""
    if len(positions) <= k:
        return positions
    return [positions[i * len(positions) // k] for i in range(k)]


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


STYLE = """body{font:15px/1.4 system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:10px;color:#222}
h1{font-size:1.2em;overflow-wrap:anywhere}h2{font-size:1.05em;overflow-wrap:anywhere;margin-top:1.5em}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px}dt{color:#555}dd{margin:0}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:10px}
figure{margin:0}img{width:100%;height:auto;display:block;background:#eee;image-rendering:auto}
figcaption{font-size:12px;overflow-wrap:anywhere}.note{color:#666;font-size:13px}figure[hidden]{display:none}
li.failure{margin:6px 0;overflow-wrap:anywhere}pre{white-space:pre-wrap;margin:2px 0;font-size:12px;color:#a00}"""


def _head(uri: str) -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>sdbatch: {_esc(uri)}</title><style>{STYLE}\n{CHART_STYLE}\n{DUP_STYLE}</style></head><body>"
            f"<h1>{_esc(uri)}</h1><p class=note>made by sdbatch gallery at "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}</p>")


def _totals(seen: _Survey, counts: dict, success: dict, settings: GallerySettings, store: Store) -> str:
    seconds = seen.seconds
    devices = sorted(seen.devices)
    last = success.get("last_run") or {}
    rows = [("rows", f"{counts['rows_total']:,}"), ("ok", f"{counts['rows_ok']:,}"),
            ("failed", f"{counts['rows_failed']:,}"), ("pending", f"{counts['rows_pending']:,}"),
            ("images/s", f"{last['images_per_second']:g} (last invocation, {last.get('actors', '?')} actor(s) "
                         "together, "
                         "while rendering)" if "images_per_second" in last else "unknown (no _SUCCESS.json yet)"),
            ("GPU-hours", f"{seconds / 3600:.4g} on {', '.join(devices) or 'no device'}"),
            ("driver", describe(read_progress(store)))]
    if settings.gpu_hour_price is not None and counts["rows_ok"]:
        per_1000 = seconds / 3600 * settings.gpu_hour_price / counts["rows_ok"] * 1000
        rows.append(("cost / 1,000 images", f"{per_1000:.4g} at {settings.gpu_hour_price:g} per GPU-hour"))
    items = "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in rows)
    expiry = ""
    if store.local_folder() is None:
        ends = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(time.time() + settings.expires))
        expiry = f" Image links are presigned and stop working at {ends}; run sdbatch gallery again for new ones."
    return (f"<section id=totals><h2>Totals</h2><dl>{items}</dl><p class=note>GPU-hours is the sum of the rows' "
            "render_seconds / 3600: time inside pipeline calls, each row charged its share of its batch. It leaves "
            "out start-up, model and LoRA loading, waiting on storage and idle GPUs (and images adopted from an "
            f"earlier attempt), so the bill is higher; the cost per 1,000 images is a floor.{expiry}</p></section>")


def _toc(seen: _Survey, settings: GallerySettings) -> str:
    by = _esc(settings.group_by or "variant")
    items = "".join(f'<li><a href="#g{n}">{_esc(key)}</a> ({rows:,})</li>'
                    for n, (key, rows) in enumerate(seen.groups.items()))
    others = len(seen.others)
    more = ""
    if others:
        counted = f"{others:,}" if others < MAX_COUNTED_GROUPS else f"over {MAX_COUNTED_GROUPS:,}"
        more = f"<p class=note>{counted} more groups are not shown (--max-groups {settings.max_groups}).</p>"
    total = f"{len(seen.groups) + others:,}" if others < MAX_COUNTED_GROUPS else f"over {MAX_COUNTED_GROUPS:,}"
    where = (f"<p class=note id=where>Only the rows where {_esc(settings.where)}: the charts, groups and failures; "
             "the totals are the whole run's.</p>" if settings.where else "")
    return f"<nav><h2>{total} group(s) by {by}</h2>{where}<ul>{items}</ul>{more}</nav>"


def _groups(shown: dict[str, list[dict]], seen: _Survey, settings: GallerySettings, link: Link, dups: DupGroups) -> str:
    sections = []
    for n, (key, rows) in enumerate(shown.items()):
        total = seen.groups[key]
        figures = "".join(_figure(row, link, seen.scores, dups.marker(row)) for row in rows)
        note = (f"showing {len(rows)} of {total:,}, evenly spaced (--per-group {settings.per_group})"
                if len(rows) < total else f"all {total:,}")
        sections.append(f'<section class=group id="g{n}"><h2>{_esc(key)}</h2><p class=note>{note}</p>'
                        f"<div class=grid>{figures}</div></section>")
    return "\n".join(sections)


def _figure(row: dict, link: Link, scores: list[str], dup: tuple[str, str]) -> str:
    url = _esc(link(row["image"]))
    size = f' width="{row["width"]}" height="{row["height"]}"' if row["width"] and row["height"] else ""
    data = "".join(f' data-{name}="{row[name]}"' for name in scores if row.get(name) is not None)
    shown = "".join(f"<br>{name} {row[name]:.3f}" for name in scores if row.get(name) is not None)
    return (f'<figure class=thumb{data}{dup[0]}><a href="{url}"><img src="{url}" loading="lazy" alt="{_esc(row["id"])}"'
            f'{size}></a><figcaption><b>{_esc(row["id"])}</b> seed {_esc(row["seed"])}<br>{_esc(row["prompt"])}'
            f"{shown}{dup[1]}</figcaption></figure>")


# Sorts and filters the thumbnails already on the page by a score; the page works without it.
SCORE_SCRIPT = """<script>
function sdbatchScores(){const by=document.getElementById('score-by').value,
 least=parseFloat(document.getElementById('score-min').value);let shown=0;
 for(const grid of document.querySelectorAll('.grid')){const figures=[...grid.children];
  if(by){figures.sort((a,b)=>(parseFloat(b.dataset[by]??'-Infinity'))-(parseFloat(a.dataset[by]??'-Infinity')));
   figures.forEach(f=>grid.appendChild(f));}
  for(const f of figures){const v=parseFloat(f.dataset[by]);const keep=!by||isNaN(least)||v>=least;
   f.hidden=!keep;shown+=keep;}}
 document.getElementById('score-shown').textContent=shown;}
</script>"""


def _score_controls(scores: list[str]) -> str:
    """Sort the thumbnails by a score (highest first) and hide those under a minimum."""
    if not scores:
        return ""
    options = "".join(f'<option value="{name}">{name}</option>' for name in scores)
    return (f'<section id=score-controls><label>sort by <select id=score-by onchange="sdbatchScores()">'
            f'<option value="">plan order</option>{options}</select></label> <label>at least <input id=score-min '
            'type=number step=any oninput="sdbatchScores()"></label> <span class=note><span id=score-shown>'
            f'</span> shown</span>{SCORE_SCRIPT}</section>')


def _failures(seen: _Survey, settings: GallerySettings) -> str:
    if seen.failed == 0:
        return "<section id=failures><h2>Failures</h2><p>none</p></section>"
    shown = seen.failures
    items = "".join(f'<li class=failure data-id="{_esc(r["id"])}"><b>{_esc(r["id"])}</b> {_esc(r["prompt"])}'
                    f'<pre>{_esc(r["error"])}</pre></li>' for r in shown)
    more = (f"<p class=note>The first {len(shown):,} of {seen.failed:,}; all are in sdbatch.read_results(OUTPUT)."
            "</p>" if seen.failed > len(shown) else "")
    return f"<section id=failures><h2>Failures ({seen.failed:,})</h2>{more}<ul>{items}</ul></section>"

