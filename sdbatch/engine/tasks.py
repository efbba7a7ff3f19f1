"""Many calls of one function as Ray tasks, a bounded number in flight, their results in order: post-processing's
shape (compaction's parts, an export's parts and windows), the driver holding refs and small results only."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import ray
from ray.exceptions import RayError

# Tasks in flight per CPU of the cluster: one computing, one waiting on the store, so a CPU never idles on
# I/O; more would only hold finished results and queued tasks.
IN_FLIGHT_PER_CPU = 2


class TaskFailed(Exception):
    """Call `index` failed twice (a try and its one retry): `why` is its cause, in one line."""

    def __init__(self, index: int, why: str) -> None:
        super().__init__(f"call {index}: {why}")
        self.index, self.why = index, why


@contextlib.contextmanager
def on_cluster(address: str | None) -> Iterator[None]:
    """Ray for the tasks: a Ray this process is already connected to (a script's, a test's) as it is, left
    connected; else the cluster at `address`, or a private local Ray started for them and shut down after."""
    if ray.is_initialized():
        yield
        return
    from sdbatch.engine import cluster  # its actor module loads torch: not for a caller already connected

    cluster.connect(address)
    try:
        yield
    finally:
        cluster.shutdown()


def remote(function: Callable) -> Any:
    # One retry: a call that fails twice has a cause a third try would not pass (a corrupt file).
    return ray.remote(num_cpus=1, max_retries=1, retry_exceptions=True)(function)


def in_flight_limit(tasks: int | None = None) -> int:
    return max(1, tasks or IN_FLIGHT_PER_CPU * int(ray.cluster_resources().get("CPU", 1)))


def run_all(task: Any, calls: Sequence[tuple], tasks: int | None = None) -> list[Any]:
    """task.remote(*call) for every call, at most `tasks` in flight (default: in_flight_limit); the results in
    the calls' order. The first call to fail twice raises TaskFailed, and the calls still running are
    cancelled: without every result the others are no use."""
    limit, results, pending = in_flight_limit(tasks), {}, {}
    todo = iter(enumerate(calls))
    try:
        while len(results) < len(calls):
            for index, call in todo:
                pending[task.remote(*call)] = index
                if len(pending) >= limit:
                    break
            [ref], _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(ref)
            results[index] = get_one(ref, index)
    finally:
        for ref in pending:
            ray.cancel(ref)
    return [results[index] for index in range(len(calls))]


def get_one(ref: Any, index: int = 0) -> Any:
    try:
        return ray.get(ref)
    except RayError as exc:
        cause = getattr(exc, "cause", None) or exc
        raise TaskFailed(index, f"{type(cause).__name__}: {str(cause).rstrip('.')}") from exc
