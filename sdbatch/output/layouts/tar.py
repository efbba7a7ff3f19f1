"""WebDataset layout: one tar per shard with {id}.{ext}, {id}.json (the full result row) and {id}.txt (the prompt)."""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Sample:
    row_id: str
    extension: str  # png, jpg or webp
    image: bytes
    result: dict[str, Any]  # the full result row, labels included
    prompt: str


def tar_key(shard_id: str) -> str:
    return f"shards/{shard_id}.tar"


def member_ref(shard_id: str, row_id: str, extension: str) -> str:
    """The `image` of a result row in this layout: the tar's key, '#', the member's name."""
    return f"{tar_key(shard_id)}#{row_id}.{extension}"


def split_ref(ref: str) -> tuple[str, str | None]:
    """(object key, member name or None) of an `image` value of either layout."""
    key, _, member = ref.partition("#")
    return key, member or None


def build_tar(samples: list[Sample]) -> bytes:
    """The shard's tar, byte for byte the same for the same samples (fixed mtimes and owners)."""
    buffer = io.BytesIO()
    # PAX: a member name over 100 characters (ids may have 128) gets an extended header; shorter names
    # get plain ustar headers, which every tar reader takes.
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for sample in samples:
            # WebDataset groups members by the name before the first dot: ids may hold dots, so the
            # loader's default split would break them; sdbatch ids that contain '.' are documented.
            _add(tar, f"{sample.row_id}.{sample.extension}", sample.image)
            _add(tar, f"{sample.row_id}.json", json.dumps(sample.result, sort_keys=True, default=str).encode())
            _add(tar, f"{sample.row_id}.txt", sample.prompt.encode())
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def rows_from_tar(data: bytes) -> list[dict[str, Any]]:
    """The result rows stored in a shard's tar (to adopt a tar whose attempt died before committing)."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        return [json.loads(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".json")]


def read_member(data: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        return tar.extractfile(name).read()


def members(data: bytes, suffixes: tuple[str, ...]) -> list[tuple[str, bytes]]:
    """(name, bytes) of the tar's members whose names end with one of the suffixes, in tar order."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()
                if m.isfile() and m.name.lower().endswith(suffixes)]
