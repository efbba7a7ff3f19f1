"""Local paths judged without raising: a name too long, a NUL byte or an unknown ~user is a problem, not a crash."""

from __future__ import annotations

from pathlib import Path

from sdbatch.manifest.problems import shown

# What most filesystems allow for one name and for a whole path (Linux's NAME_MAX and PATH_MAX).
NAME_MAX = 255
PATH_MAX = 4096


def path_problem(reference: str) -> str | None:
    """Why the string cannot name a local file at all, or None."""
    if "\x00" in reference:
        return "holds a NUL character, which no path can; remove it"
    size = len(reference.encode("utf-8", "surrogatepass"))
    if size > PATH_MAX:
        return f"is {size} bytes long, more than the {PATH_MAX} a path can be; shorten it"
    long = next((part for part in reference.split("/") if len(part.encode("utf-8", "surrogatepass")) > NAME_MAX), None)
    if long is not None:
        return f"has a name of {len(long.encode('utf-8', 'surrogatepass'))} bytes, more than the {NAME_MAX} a file " \
               f"name can be ({shown(long, 40)}); shorten it"
    if reference.startswith("~"):
        try:
            Path(reference).expanduser()
        except RuntimeError:
            user = shown(reference.split("/")[0])
            return f"starts with {user}, a user this machine does not have; write the full path"
    return None


def local_path(reference: str) -> Path | None:
    """The reference as a local path, ~ expanded; None where it cannot be one (path_problem says why)."""
    return None if path_problem(reference) else Path(reference).expanduser()


def exists(path: Path | None) -> bool:
    return _safely(path, Path.exists)


def is_file(path: Path | None) -> bool:
    return _safely(path, Path.is_file)


def is_dir(path: Path | None) -> bool:
    return _safely(path, Path.is_dir)


def _safely(path: Path | None, test) -> bool:
    """A stat that answers False where the OS refuses the question (permissions, odd bytes), as for a missing file."""
    if path is None:
        return False
    try:
        return test(path)
    except (OSError, ValueError):
        return False
