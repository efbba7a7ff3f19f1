"""Manifests from rendered images: what each file's generator embedded (sdbatch.metadata), read back into rows;
a file that cannot be read is skipped by name, and what a row does not render as written is counted."""

from __future__ import annotations

import collections
import contextlib
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from sdbatch.a1111.parameters import hashes_of
from sdbatch.errors import ManifestError
from sdbatch.manifest import paths
from sdbatch.manifest.columns import is_valid_id
from sdbatch.manifest.controlnets import CONTROLNET_TYPE
from sdbatch.manifest.references import LORA_TYPE
from sdbatch.metadata import GENERATORS, Reading, UnreadableImage, read_image
from sdbatch.output.layouts import LAYOUTS
from sdbatch.settings import S3Settings
from sdbatch.store import open_store

# Rows held before they are written out: a run's images may be far more than memory holds as rows.
BATCH_ROWS = 10_000
# Files (or shard tars) read at once: a store's latency hidden; memory stays a few files' worth.
READERS = 16
# Names of skipped files kept per kind of skip, for the summary; the rest are counted.
LISTED_SKIPS = 5
SCHEMA = pa.schema([("id", pa.string()), ("prompt", pa.string()), ("negative_prompt", pa.string()),
                    ("seed", pa.int64()), ("steps", pa.int64()), ("guidance_scale", pa.float64()),
                    ("true_cfg_scale", pa.float64()), ("width", pa.int64()), ("height", pa.int64()),
                    ("scheduler", pa.string()), ("model", pa.string()), ("vae", pa.string()), ("loras", LORA_TYPE),
                    ("controlnets", CONTROLNET_TYPE), ("prompt_syntax", pa.string()), ("clip_skip", pa.int64()),
                    ("max_sequence_length", pa.int64()),
                    ("ti_hashes", pa.string()), ("init_image", pa.string()), ("mask_image", pa.string()),
                    ("strength", pa.float64()), ("hires_scale", pa.float64()), ("hires_steps", pa.int64()),
                    ("hires_strength", pa.float64()), ("hires_upscaler", pa.string()), ("generator", pa.string()),
                    ("source_image", pa.string())])


@dataclass(frozen=True)
class ReadOptions:
    # Where A1111's `VAE: name.safetensors` is looked up; None: the field is reported, not rendered.
    vae_dir: str | None = None


def manifest_from_images(location: str, s3: S3Settings | None = None,
                         options: ReadOptions = ReadOptions()) -> tuple[pa.Table, int]:
    """(manifest, images skipped for carrying no metadata) for every image under a folder or s3:// prefix,
    loose or inside webdataset shard tars."""
    tally = ImagesRead()
    table = pa.Table.from_batches(list(_batches(location, s3, tally, options)), schema=SCHEMA)
    return table, tally.skipped


def write_manifest_from_images(location: str, output: str, s3: S3Settings | None = None, strict: bool = False,
                               options: ReadOptions = ReadOptions()) -> ImagesRead:
    """The same manifest written to `output` a batch of rows at a time. Nothing is left at `output` unless all
    went well; with `strict`, an image whose metadata asks for what sdbatch does not render fails it."""
    tally, partial = ImagesRead(), f"{output}.partial"
    try:
        with pq.ParquetWriter(partial, SCHEMA) as writer:
            for batch in _batches(location, s3, tally, options):
                writer.write_batch(batch)
        if strict and tally.dropped:
            raise ManifestError(f"{location}: the images ask for what sdbatch does not render ({tally.summary()}); "
                                "drop --strict to render them without it")
        os.replace(partial, output)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
    return tally


@dataclass
class ImagesRead:
    seen: int = 0
    rows: int = 0
    skipped: int = 0  # images without metadata any generator here writes
    dropped: collections.Counter[str] = field(default_factory=collections.Counter)  # field -> images with it
    embeddings: collections.Counter[str] = field(default_factory=collections.Counter)  # TI name -> images
    generators: collections.Counter[str] = field(default_factory=collections.Counter)
    unreadable: dict[str, list[str]] = field(default_factory=dict)  # kind -> the files, the first few named
    unreadable_count: collections.Counter[str] = field(default_factory=collections.Counter)

    def summary(self) -> str:
        return "; ".join(f"{name} in {count} image(s)" for name, count in sorted(self.dropped.items()))

    def skip(self, kind: str, ref: str) -> None:
        self.unreadable_count[kind] += 1
        listed = self.unreadable.setdefault(kind, [])
        if len(listed) < LISTED_SKIPS:
            listed.append(ref)

    def skips(self) -> str:
        return "; ".join(f"{count} {kind} ({', '.join(self.unreadable[kind])}"
                         f"{', ...' if count > len(self.unreadable[kind]) else ''})"
                         for kind, count in sorted(self.unreadable_count.items()))


@dataclass(frozen=True)
class _Found:
    """One image: where it is, and what its metadata says (None: none; an UnreadableImage: no whole image)."""

    ref: str
    name: str
    reading: Reading | UnreadableImage | None


def _batches(location: str, s3: S3Settings | None, tally: ImagesRead,
             options: ReadOptions) -> Iterator[pa.RecordBatch]:
    store = open_store(location, s3)
    rows: list[dict[str, Any]] = []
    for found in _found(store):
        tally.seen += 1
        if isinstance(found.reading, UnreadableImage):
            tally.skip(found.reading.kind, found.ref)
            continue
        if found.reading is None:
            tally.skipped += 1
            continue
        rows.append(_row(found, tally, options))
        if len(rows) == BATCH_ROWS:
            yield pa.RecordBatch.from_pylist(rows, schema=SCHEMA)
            rows = []
    if rows:
        yield pa.RecordBatch.from_pylist(rows, schema=SCHEMA)
    if not tally.seen:
        raise ManifestError(f"no .png/.jpg/.webp images (or .tar shards of them) under {location}")
    if not tally.rows:
        skips = f" ({tally.skips()})" if tally.unreadable_count else ""
        known = ", ".join(generator.name for generator in GENERATORS)
        raise ManifestError(f"none of the {tally.seen} images under {location} carries generation metadata sdbatch "
                            f"reads ({known}){skips}")


def _found(store) -> Iterator[_Found]:
    """Every image under the store, its metadata read on a few threads, in the listing's order."""
    keys = store.list()
    with ThreadPoolExecutor(READERS, thread_name_prefix="sdbatch-from-images") as pool:
        window: collections.deque = collections.deque()
        for key in keys:
            window.append(pool.submit(_read_key, store, key))
            if len(window) >= READERS:
                yield from window.popleft().result()
        while window:
            yield from window.popleft().result()


def _read_key(store, key: str) -> list[_Found]:
    """The images of one listed key (a loose file, or a shard tar's members), each read."""
    found: list[_Found] = []
    try:
        for layout in LAYOUTS.values():
            for image in layout.images_in(store, key):
                found.append(_Found(image.ref, image.name, _reading(image.data)))
    except Exception as exc:  # noqa: BLE001 - a tar that cannot be read is skipped by name like a bad image
        found.append(_Found(key, PurePosixPath(key).name, UnreadableImage("not readable", f"{exc}")))
    return found


def _reading(data: bytes) -> Reading | UnreadableImage | None:
    try:
        return read_image(data)
    except UnreadableImage as exc:
        return exc
    except Exception as exc:  # noqa: BLE001 - metadata a generator's reader chokes on: the file is skipped by name
        return UnreadableImage("metadata sdbatch cannot read", f"{type(exc).__name__}: {exc}")


def _row(found: _Found, tally: ImagesRead, options: ReadOptions) -> dict[str, Any]:
    reading = found.reading
    row = dict(reading.row)
    unrendered = set(reading.unrendered)
    vae = _vae(row.pop("vae_name", None), options)
    if vae:
        row["vae"] = vae
        unrendered.discard("VAE")
    tally.dropped.update(unrendered)
    tally.generators[reading.generator] += 1
    tally.embeddings.update(name for name, _ in hashes_of(row.get("ti_hashes")))
    if not row.get("id"):
        stem = Path(found.name).stem
        row["id"] = stem if is_valid_id(stem) else f"img{tally.rows:06d}"
    row["generator"] = reading.generator  # labels: which tool made the image, which file this row reproduces
    row["source_image"] = found.ref
    tally.rows += 1
    return row


def _vae(name: str | None, options: ReadOptions) -> str | None:
    """A1111's VAE file name under --vae-dir, as a path; None where it is not there."""
    if not name or not options.vae_dir:
        return None
    root = paths.local_path(options.vae_dir)
    for candidate in (root / name, root / f"{name}.safetensors") if root else ():
        if paths.is_file(candidate):
            return str(candidate.resolve())
    return None
