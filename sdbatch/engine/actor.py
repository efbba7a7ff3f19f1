"""The Ray actor: one per GPU (or a share of the CPUs), holding a warm Renderer across shards."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ray

from sdbatch.engine import priority
from sdbatch.render.renderer import Renderer
from sdbatch.settings import RendererSettings
from sdbatch.store.base import Store
from sdbatch.tasks import ShardResult, ShardTask


class RenderActor:
    """Thin: everything stateful lives in Renderer, so the same work runs without Ray too.

    Every use of the device happens on one thread of its own, one shard at a time. Ray runs up to
    `shards_in_flight` calls at once (max_concurrency), so while one shard waits for its image writes and
    its commit on storage, the next shard already renders.
    """

    def __init__(self, store: Store, settings: RendererSettings):
        # Ray starts a worker's main thread at nice 15, and its own threads at 0: on a busy node the render
        # would wait for every other process and for Ray's RPC wake-ups (measured: docs/BENCHMARKS.md).
        # The device thread comes first, and the threads it starts (torch's pool, the image pools) with it.
        self._device = ThreadPoolExecutor(1, thread_name_prefix="sdbatch-device",
                                          initializer=priority.favour_calling_thread)
        self.renderer: Renderer = self._on_device(lambda: Renderer(store, settings))

    def _on_device(self, work: Callable[[], Any]) -> Any:
        return self._device.submit(work).result()

    def warm(self, model: str) -> dict:
        """Load the first model before any shard is sent, so a bad model stops the run early."""
        loaded, thread = self._on_device(lambda: (self.renderer.model(model), threading.get_native_id()))
        return {"pid": os.getpid(), "device": self.renderer.device_name(), "model_hash": loaded.model_hash,
                "model_loads": self.renderer.model_loads, "device_thread": thread,
                "node": _node_id()}

    def render_shard(self, task: ShardTask) -> ShardResult:
        return self.renderer.render_shard(task, self._on_device)


def _node_id() -> str:
    """The node this actor runs on, to tell a drained node from a crash; "" in a plain process (asking Ray there
    would start one)."""
    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


# Restarts are the dispatcher's job: it replaces a dead actor and requeues its shards itself.
# max_concurrency is set per pool (engine/cluster.py): calls beyond one wait for the device thread.
RemoteRenderActor = ray.remote(max_restarts=0, max_task_retries=0)(RenderActor)
