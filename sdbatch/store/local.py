"""LocalStore: the Store protocol over a local folder, with create-once writes by hard link."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from urllib.parse import urlsplit

from sdbatch.errors import ObjectNotFound, StoreError
from sdbatch.store.base import PROBE_DIR, PutResult, Store, check_key, check_prefix

_TMP_MARK = ".sdbatch-tmp-"
_FILE = "file://"
# A folder removed under a write this often in a row is not a race but a fault worth reporting.
_FOLDER_RACES = 5


def open_store(uri: str, s3=None) -> LocalStore:
    return LocalStore(_path(uri))


def split(uri: str) -> tuple[str, str]:
    """(folder, file name) of a local file."""
    folder, _, name = os.path.abspath(os.path.expanduser(_path(uri))).rpartition(os.sep)
    return folder or os.sep, name


def read(uri: str, reader) -> bytes:
    path = Path(_path(uri)).expanduser()
    if not path.is_file():
        raise ObjectNotFound("no such file")
    return path.read_bytes()


def _create_beside(tmp: str):
    """Open tmp for writing, making its folder; again if another process's cleanup removed the folder, or one
    above it, meanwhile (drivers sharing an output each remove their empty probe folder, and the output folder
    if they made it): between the two steps, or inside makedirs, between its check of a parent and its mkdir."""
    for _ in range(_FOLDER_RACES - 1):
        with contextlib.suppress(FileNotFoundError):
            os.makedirs(os.path.dirname(tmp), exist_ok=True)
            return open(tmp, "wb")
    os.makedirs(os.path.dirname(tmp), exist_ok=True)
    return open(tmp, "wb")


def _path(uri: str) -> str:
    return urlsplit(uri).path if uri.startswith(_FILE) else uri


class LocalStore(Store):
    def __init__(self, root: str) -> None:
        self.uri = os.path.abspath(os.path.expanduser(root))

    def url_for(self, key: str) -> str:
        return os.path.join(self.uri, *check_key(key).split("/"))

    def browser_url(self, key: str, expires: int, content_type: str | None = None) -> str:
        return Path(self.url_for(key)).as_uri()

    def local_folder(self) -> str | None:
        return self.uri

    @contextlib.contextmanager
    def _staged(self, action: str, key: str, data: bytes):
        """Yield (tmp, final) with data in tmp beside final; tmp is gone afterwards."""
        path = self.url_for(key)
        # Same directory, so link/replace never crosses filesystems.
        tmp = os.path.join(os.path.dirname(path), f"{_TMP_MARK}{uuid.uuid4().hex[:12]}")
        try:
            with _create_beside(tmp) as f:
                f.write(data)
            yield tmp, path
        except OSError as e:
            raise StoreError(f"cannot {action} {path}: {e.strerror or e}") from e
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def put(self, key: str, data: bytes) -> None:
        with self._staged("write", key, data) as (tmp, path):
            os.replace(tmp, path)

    def put_once(self, key: str, data: bytes) -> PutResult:
        with self._staged("write", key, data) as (tmp, path):
            try:
                # link() never replaces and publishes the complete file at once.
                os.link(tmp, path)
                return PutResult.CREATED
            except FileExistsError:
                pass
        return PutResult.IDENTICAL if self.get(key) == data else PutResult.CONFLICT

    def get(self, key: str) -> bytes:
        with self._reading(key) as path, open(path, "rb") as f:
            return f.read()

    def read_range(self, key: str, start: int, stop: int) -> bytes:
        with self._reading(key) as path, open(path, "rb") as f:
            f.seek(start)
            return f.read(max(0, stop - start))

    def size(self, key: str) -> int:
        with self._reading(key) as path:
            return os.stat(path).st_size

    @contextlib.contextmanager
    def _reading(self, key: str):
        path = self.url_for(key)
        try:
            yield path
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
            raise ObjectNotFound(f"{path} does not exist") from e
        except OSError as e:
            raise StoreError(f"cannot read {path}: {e.strerror or e}") from e

    def exists(self, key: str) -> bool:
        return os.path.isfile(self.url_for(key))

    def list(self, prefix: str = "") -> list[str]:
        # Read only the folder the prefix ends in, and below it only the entries the prefix matches: a
        # shard's listing must not cost more as the run's other shards pile up beside it.
        check_prefix(prefix)
        folder, _, start = prefix.rpartition("/")
        keys: list[str] = []
        self._collect(folder, start, keys)
        return sorted(keys)

    def _collect(self, folder: str, start: str, keys: list[str]) -> None:
        try:
            entries = list(os.scandir(os.path.join(self.uri, *folder.split("/")) if folder else self.uri))
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            if not entry.name.startswith(start) or entry.name.startswith(_TMP_MARK):
                continue
            key = f"{folder}/{entry.name}" if folder else entry.name
            if entry.is_dir():
                if not entry.is_symlink():  # as os.walk: a linked folder is neither a key nor walked
                    self._collect(key, "", keys)
            else:
                keys.append(key)

    def arrow_filesystem(self):
        import pyarrow.fs

        return pyarrow.fs.LocalFileSystem(), self.uri

    def tags(self, prefix: str = "") -> dict[str, str]:
        tags = {}
        for key in self.list(prefix):
            with contextlib.suppress(FileNotFoundError):  # deleted since the listing: not there
                st = os.stat(self.url_for(key))
                tags[key] = f"{st.st_size}:{st.st_mtime_ns}"
        return tags

    def download(self, key: str, path: str) -> None:
        try:
            shutil.copyfile(self.url_for(key), path)
        except (FileNotFoundError, IsADirectoryError) as e:
            raise ObjectNotFound(f"{self.url_for(key)} does not exist") from e
        except OSError as e:
            raise StoreError(f"cannot copy {self.url_for(key)} to {path}: {e.strerror or e}") from e

    def upload(self, path: str, key: str) -> None:
        with self._staged("write", key, b"") as (tmp, final):
            shutil.copyfile(path, tmp)
            os.replace(tmp, final)

    def delete(self, key: str) -> None:
        path = self.url_for(key)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StoreError(f"cannot delete {path}: {e.strerror or e}") from e

    def check_writable(self) -> None:
        existed = os.path.isdir(self.uri)
        key = f"{PROBE_DIR}/{uuid.uuid4().hex}"
        self.put(key, b"probe")
        self.delete(key)
        with contextlib.suppress(OSError):  # tidy up unless another probe is mid-flight
            os.rmdir(os.path.join(self.uri, PROBE_DIR))
            if not existed:  # a run that stops before writing leaves no trace
                os.rmdir(self.uri)
