"""The driver's heartbeat in the output (_progress.json): written as it runs, read to tell a live run from a dead."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from sdbatch.errors import ObjectNotFound, StoreError
from sdbatch.store.base import Store

PROGRESS_KEY = "_progress.json"
# A running driver's heartbeat older than this many intervals means the driver is gone (killed, or its
# machine lost): a beat or two may be late or lost on a slow store, not three.
STALE_INTERVALS = 4


class Heartbeat:
    """Writes the run's state every `interval` seconds once `start` is called (never before the output is
    claimed); a write that fails costs that beat only."""

    def __init__(self, store: Store, interval: float, shards_total: int, shards_before: int):
        self.store, self.interval = store, interval
        self.base = {"shards_total": shards_total, "host": os.uname().nodename, "pid": os.getpid(),
                     "interval_seconds": interval, "started_at": _iso(time.time())}
        self.shards_before = shards_before  # committed before this invocation
        self.pool: dict[str, int] = {}
        self.started = False
        self.last = 0.0

    def start(self) -> None:
        self.started = True
        self._write("running")

    def beat(self, pool: dict[str, int]) -> None:
        self.pool = pool
        if self.started and time.monotonic() - self.last >= self.interval:
            self._write("running")

    @contextlib.contextmanager
    def beating(self) -> Iterator[None]:
        """Beats from a thread of its own while the block runs: for the driver's work after the dispatch loop."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(self.interval):
                self.beat(self.pool)

        thread = threading.Thread(target=loop, name="sdbatch-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def end(self, state: str, reason: str = "", shards_done: int | None = None) -> None:
        """The driver's last word: "ended" with the run's shards done (the pool's last tick is older than the
        last shards), or "stopped" by an error, with the pool as it last was."""
        if self.started:
            if shards_done is not None:
                self.pool = {}
            self._write(state, reason, shards_done)

    def _write(self, state: str, reason: str = "", shards_done: int | None = None) -> None:
        self.last = time.monotonic()
        now = time.time()
        done = shards_done if shards_done is not None else self.shards_before + self.pool.get("shards_done", 0)
        doc: dict[str, Any] = {**self.base, "state": state, "updated": now, "updated_at": _iso(now),
                               **self.pool, "shards_done": done}
        if reason:
            doc["reason"] = reason
        try:
            self.store.put(PROGRESS_KEY, json.dumps(doc, sort_keys=True).encode())
        except StoreError:
            pass  # the next beat tries again; a missed one only ages the last


def read_progress(store: Store) -> dict[str, Any] | None:
    try:
        return json.loads(store.get(PROGRESS_KEY))
    except ObjectNotFound:
        return None


def describe(doc: dict[str, Any] | None, now: float | None = None) -> str:
    """The driver's state in a line, as `sdbatch status` and the gallery show it."""
    if doc is None:
        return "no driver has rendered into this output yet"
    now = time.time() if now is None else now
    age = max(0.0, now - doc["updated"])
    where = f"on {doc.get('host', '?')}, pid {doc.get('pid', '?')}"
    if doc["state"] == "running":
        if age <= STALE_INTERVALS * doc.get("interval_seconds", 30.0):
            return (f"running (last heartbeat {_span(age)} ago {where}; {doc.get('actors_ready', 0)} of "
                    f"{doc.get('actors', 0)} actors ready)")
        return (f"not running: no heartbeat for {_span(age)} (its driver {where} was killed or lost its "
                "machine); rerun the same command to resume")
    ended = f"{doc['state']} {_span(age)} ago ({doc['updated_at']}, {where})"
    return f"{ended}: {doc['reason']}" if doc.get("reason") else ended


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
