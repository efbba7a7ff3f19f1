"""What every output layout implements: a shard's output for one attempt, and how readers find its images."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa

from sdbatch.output.records import RenderedRow
from sdbatch.output.uploads import Uploads
from sdbatch.store.base import Store
from sdbatch.tasks import ShardTask


@dataclass(frozen=True)
class Outcome:
    """What one attempt at a shard committed, or found committed."""

    attempt: str
    marker: dict  # the shard's marker that stands: this attempt's, or another's that committed first
    results: list[dict]
    rendered: int  # rows rendered by this attempt
    adopted: int  # rows whose image an earlier or racing attempt wrote
    pipeline_seconds: float  # this attempt's time in pipeline calls, whichever attempt's images stand

    @property
    def committed(self) -> bool:
        return self.marker["attempt"] == self.attempt


@dataclass(frozen=True)
class FoundImage:
    """An image a reader found in a store: its `image` value in the results, its file name, its bytes."""

    ref: str
    name: str
    data: bytes


class ShardOutput(Protocol):
    """One attempt's output of one shard: the rows left to render, each rendered row written, then the commit."""

    def to_render(self) -> list[dict] | None: ...  # None: nothing to render, no rendering phase at all
    def add(self, rendered: RenderedRow, provenance: dict[str, Any]) -> None: ...  # on the device's thread
    def finish(self) -> Outcome: ...  # waits for the writes, then commits


class Layout(Protocol):
    """How a run's images are laid out in its store; `name` is the job's output.layout."""

    name: str
    # Each image an object of its own at its `image` key: a dataset reader can take the output's folder as it is.
    loose_images: bool

    def shard(self, task: ShardTask, store: Store, uploads: Uploads, unrendered: dict[str, Any]) -> ShardOutput:
        """The output of one attempt at a shard. `unrendered`: the provenance of rows this attempt records without
        rendering them (adopted, or lost with another attempt)."""

    def check_ids(self, ids: pa.Array | pa.ChunkedArray, first_row: int) -> None:
        """ManifestError naming the first id this layout cannot hold (its row counted from `first_row`)."""

    def images_in(self, store: Store, key: str) -> Iterator[FoundImage]:
        """The images the object at `key` holds in this layout; none if it is not one of this layout's."""

    def browsable(self, store: Store) -> Callable[[str], str]:
        """A result's `image` value to a key a browser can open in the store (copied out once if need be)."""


def pipeline_seconds(records: Iterable[dict]) -> float:
    """The rows' time in pipeline calls, as their result records hold it."""
    return sum(r.get("render_seconds") or 0.0 for r in records)
