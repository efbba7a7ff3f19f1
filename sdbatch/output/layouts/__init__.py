"""Output layouts: how a shard's images are written, adopted and committed, the ids each takes, and how readers
(the gallery, `manifest from-images`) find its images again. A layout is a module with a class implementing
base.Layout, and a line in LAYOUTS."""

from __future__ import annotations

from sdbatch.errors import SpecError
from sdbatch.output.layouts.files import FilesLayout
from sdbatch.output.layouts.layout import Layout
from sdbatch.output.layouts.webdataset import WebdatasetLayout

LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (FilesLayout(), WebdatasetLayout())}


def layout_named(name: str) -> Layout:
    """The layout a job's output.layout names; SpecError naming the layouts there are."""
    if name not in LAYOUTS:
        raise SpecError(f"job setting output.layout = {name!r} is invalid; use one of {', '.join(LAYOUTS)}")
    return LAYOUTS[name]
