"""The Ray actor: one per GPU (or a share of the CPUs), holding a warm Renderer across shards."""

from __future__ import annotations

import os

import ray

from sdbatch import priority
from sdbatch.render.renderer import Renderer, RendererSettings
from sdbatch.storage import Store
from sdbatch.tasks import ShardResult, ShardTask


class RenderActor:
    """Thin: everything stateful lives in Renderer, so the same work runs without Ray too."""

    def __init__(self, store: Store, settings: RendererSettings):
        # Ray starts a worker's main thread at nice 15, and its own threads at 0: on a busy node the render
        # waited for every other process (~6% of a 2-core CPU actor's speed) and for Ray's RPC wake-ups.
        priority.favour_calling_thread()
        self.renderer = Renderer(store, settings)

    def warm(self, model: str) -> dict:
        """Load the first model before any shard is sent, so a bad model stops the run early."""
        loaded = self.renderer.model(model)
        return {"pid": os.getpid(), "device": self.renderer.device_name(), "model_hash": loaded.model_hash,
                "model_loads": self.renderer.model_loads}

    def render_shard(self, task: ShardTask) -> ShardResult:
        return self.renderer.render_shard(task)


# Restarts are the dispatcher's job: it replaces a dead actor and requeues its shards itself.
RemoteRenderActor = ray.remote(max_restarts=0, max_task_retries=0)(RenderActor)
