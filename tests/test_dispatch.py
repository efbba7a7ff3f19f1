"""The Dispatcher on a real local Ray with light actors (no torch): what a replacement for a lost actor loads."""

from __future__ import annotations

import os

import pytest

from sdbatch.plan import Shard, Variant
from sdbatch.tasks import ShardResult


class _Events:
    def __init__(self):
        self.lost: list[str] = []

    def shard_done(self, result) -> None: ...
    def shard_retry(self, shard_id: str, error: str) -> None: ...
    def shard_gave_up(self, shard_id: str, error: str) -> None: ...
    def waiting(self, message: str) -> None: ...

    def actor_lost(self, actor: str, error: str) -> None:
        self.lost.append(actor)


@pytest.mark.slow
def test_a_replacement_actor_warms_the_model_of_the_work_left(tmp_path):
    """One actor renders model A's shards, then dies on its first shard of model B. Its replacement loads
    B, the model of the work left; A, the run's first model, is done and would be one load too many."""
    import ray

    from sdbatch.engine.cluster import connect
    from sdbatch.engine.scheduler import Dispatcher

    class Recorder:  # nested: shipped to the workers by value
        def __init__(self, name: str, folder: str):
            self.name, self.folder = name, folder

        def warm(self, model: str) -> dict:
            with open(os.path.join(self.folder, f"{self.name}.warm"), "w") as f:
                f.write(model)
            return {"pid": os.getpid(), "model_loads": 1}

        def render_shard(self, shard) -> ShardResult:
            if shard.variant.model == "B" and not os.path.exists(os.path.join(self.folder, "died")):
                open(os.path.join(self.folder, "died"), "w").close()
                os._exit(1)  # the process dies mid-shard, as on a lost node or an out-of-memory kill
            return ShardResult(shard.shard_id, self.name, True, 1, 0, 1, 0, 0.0, actor=self.name)

    def variant(model: str) -> Variant:
        return Variant(model, 64, 64, 2, None, 7.5, (), ())

    shards = [Shard(f"a{i}", variant("A"), (i,)) for i in range(2)] + [Shard(f"b{i}", variant("B"), (i,)) for i in range(4)]
    connect(None)
    try:
        remote = ray.remote(num_cpus=0)(Recorder)
        events = _Events()
        dispatcher = Dispatcher(lambda name: remote.options(max_restarts=0).remote(name, str(tmp_path)), actors=1,
                                in_flight=1, max_attempts=3, make_task=lambda shard: shard, events=events)
        report = dispatcher.run(shards, "A", on_ready=lambda: None)
    finally:
        ray.shutdown()
    assert events.lost == ["actor-1"] and sorted(report.results) == sorted(s.shard_id for s in shards)
    assert (tmp_path / "actor-1.warm").read_text() == "A"
    assert (tmp_path / "actor-2.warm").read_text() == "B"
