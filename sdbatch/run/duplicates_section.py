"""The morning report's near-duplicates section: the thumbnails shown, grouped by phash, each group side by side."""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sdbatch.run.duplicates import HASH_BITS, THRESHOLD, near_duplicates, parse_hash

# Enough groups to judge a run by; every thumbnail in the grids below still names its group.
MAX_SHOWN_GROUPS = 50
# A group of one image rendered many times would otherwise repeat the whole grid.
MAX_SHOWN_MEMBERS = 24
DUP_STYLE = """.dups{display:flex;flex-wrap:wrap;gap:6px}.dups figure{width:110px}
.dup-group h3{font-size:.95em;margin:.8em 0 .3em}.dup{font-size:12px;color:#a50}"""


@dataclass(frozen=True)
class DupGroups:
    """The near-duplicate groups among rows (dicts with id, image and phash), numbered from 1 in page order."""

    groups: list[list[dict]] = field(default_factory=list)
    hashed: int = 0  # rows with a readable phash: those compared
    number: dict[str, int] = field(default_factory=dict)  # a grouped row's id (ids are unique) -> its group

    @classmethod
    def of(cls, rows: list[dict], threshold: int = THRESHOLD) -> DupGroups:
        hashes = [row.get("phash") for row in rows]
        groups = near_duplicates(rows, hashes, threshold)
        hashed = sum(1 for value in hashes if parse_hash(value) is not None)
        return cls(groups, hashed, {row["id"]: n for n, group in enumerate(groups, 1) for row in group})

    def marker(self, row: dict) -> tuple[str, str]:
        """A grid thumbnail's attribute and caption line naming its group ("" for a row in none)."""
        n = self.number.get(row["id"])
        if n is None:
            return "", ""
        label = f"dup group {n}"
        shown = f'<a href="#dup-{n}">{label}</a>' if n <= MAX_SHOWN_GROUPS else label
        return f' data-dup-group="{n}"', f"<br><span class=dup>{shown}</span>"


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def dup_section(dups: DupGroups, link: Callable[[str], str]) -> str:
    """The section, or nothing when no thumbnail shown has a phash."""
    if not dups.hashed:
        return ""
    images = sum(len(group) for group in dups.groups)
    blocks = "".join(_block(n, group, link) for n, group in enumerate(dups.groups[:MAX_SHOWN_GROUPS], 1))
    more = len(dups.groups) - MAX_SHOWN_GROUPS
    note = (f"<p class=note>{more:,} more group(s) are not shown here (the first {MAX_SHOWN_GROUPS}); their "
            "thumbnails are marked in the grids below.</p>" if more > 0 else "")
    return (f"<section id=duplicates><h2>Near-duplicates</h2><p class=note><span id=dup-count>{len(dups.groups):,}"
            f"</span> group(s) holding <span id=dup-images>{images:,}</span> images, among the {dups.hashed:,} "
            f"thumbnails shown that have a phash: hashes at most {THRESHOLD} of {HASH_BITS} bits apart, directly or "
            "through others in the group. Only the thumbnails this page shows are compared (--per-group, "
            f"--max-groups, --where).</p>{blocks}{note}</section>")


def _block(n: int, rows: list[dict], link: Callable[[str], str]) -> str:
    urls = [_esc(link(row["image"])) for row in rows[:MAX_SHOWN_MEMBERS]]
    figures = "".join(f'<figure class=dup-thumb><a href="{url}"><img src="{url}" loading="lazy" alt="'
                      f'{_esc(row["id"])}"></a><figcaption>{_esc(row["id"])}</figcaption></figure>'
                      for row, url in zip(rows, urls))
    more = len(rows) - MAX_SHOWN_MEMBERS
    rest = f"<p class=note>and {more:,} more, marked dup group {n} below</p>" if more > 0 else ""
    return (f'<div class=dup-group id="dup-{n}"><h3>dup group {n} ({len(rows):,} images)</h3>'
            f"<div class=dups>{figures}</div>{rest}</div>")
