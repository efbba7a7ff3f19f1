"""The Dispatcher on a real local Ray with light actors (no torch): replacements, and a model that cannot load."""

from __future__ import annotations

import os

import pytest

from sdbatch.plan import Shard, Variant
from sdbatch.tasks import ShardResult


class _Events:
    def __init__(self):
        self.lost: list[str] = []
        self.failed_models: list[str] = []

    def shard_done(self, result) -> None: ...
    def shard_retry(self, shard_id: str, error: str) -> None: ...
    def shard_gave_up(self, shard_id: str, error: str) -> None: ...
    def waiting(self, message: str) -> None: ...
    def tick(self, pool: dict[str, int]) -> None: ...

    def model_failed(self, model: str, error: str) -> None:
        self.failed_models.append(model)

    def actor_lost(self, actor: str, error: str) -> None:
        self.lost.append(actor)


@pytest.mark.slow
def test_a_replacement_actor_warms_the_model_of_the_work_left(tmp_path):
    """One actor renders model A's shards, then dies on its first shard of model B. Its replacement loads
    B, the model of the work left; A, the run's first model, is done and would be one load too many."""
    import ray

    from sdbatch.engine.cluster import connect
    from sdbatch.engine.dispatch import Dispatcher

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

    shards = [Shard(f"a{i}", variant("A"), i, 1) for i in range(2)] + [Shard(f"b{i}", variant("B"), i, 1) for i in range(4)]
    connect(None)
    try:
        remote = ray.remote(num_cpus=0)(Recorder)
        events = _Events()
        dispatcher = Dispatcher(lambda name: remote.options(max_restarts=0).remote(name, str(tmp_path)), actors=1,
                                in_flight=1, max_attempts=3, make_task=lambda shard: shard, events=events)
        report = dispatcher.run(shards, "A", on_ready=lambda: None)
    finally:
        ray.shutdown()
    assert events.lost == ["actor-1"] and sorted(report.done) == sorted(s.shard_id for s in shards)
    assert (tmp_path / "actor-1.warm").read_text() == "A"
    assert (tmp_path / "actor-2.warm").read_text() == "B"


@pytest.mark.slow
def test_a_model_that_cannot_load_gives_up_its_shards_and_the_other_models_render(tmp_path):
    """B cannot be loaded. Found while rendering: B's shards are given up at once (none is tried on every
    actor), A's and C's render, and the run does not stop. Found by a replacement actor warming B: the same,
    and that actor goes on with the other models. A replacement that fails to start for another reason (a bad
    node) is replaced in turn, and no model is blamed."""
    import ray

    from sdbatch.engine.cluster import connect
    from sdbatch.engine.dispatch import Dispatcher
    from sdbatch.errors import ModelLoadError

    class Loader:  # nested: shipped to the workers by value
        def __init__(self, name: str, folder: str):
            self.name, self.folder = name, folder

        def _load(self, model: str) -> None:
            with open(os.path.join(self.folder, "loads"), "a") as f:
                f.write(f"{self.name} {model}\n")
            if model == "B":
                raise ModelLoadError("model 'B' failed to load: header too large")

        def warm(self, model: str) -> dict:
            if self.name == "actor-2" and os.path.exists(os.path.join(self.folder, "bad-node")):
                raise RuntimeError("CUDA error: no CUDA-capable device is detected")  # not the model's fault
            self._load(model)
            return {"pid": os.getpid(), "model_loads": 1}

        def render_shard(self, shard) -> ShardResult:
            if shard.shard_id == "a0" and not os.path.exists(os.path.join(self.folder, "died")):
                if os.path.exists(os.path.join(self.folder, "die")):
                    open(os.path.join(self.folder, "died"), "w").close()
                    os._exit(1)  # lost: its replacement warms the model of the work left, B
            self._load(shard.variant.model)
            return ShardResult(shard.shard_id, self.name, True, 1, 0, 1, 0, 0.0, actor=self.name)

    def variant(model: str) -> Variant:
        return Variant(model, 64, 64, 2, None, 7.5, (), ())

    counts = {"A": 1, "B": 4, "C": 2}  # B has the most work: what a cold actor takes first
    shards = [Shard(f"{m.lower()}{i}", variant(m), i, 1) for m, n in counts.items() for i in range(n)]
    connect(None)
    try:
        remote = ray.remote(num_cpus=0)(Loader)
        for case in ("rendering", "replacement", "bad node"):
            folder = tmp_path / case
            folder.mkdir()
            if case != "rendering":
                (folder / "die").touch()
            if case == "bad node":
                (folder / "bad-node").touch()
                events = _Events()
                report = Dispatcher(lambda name: remote.options(max_restarts=0).remote(name, str(folder)),
                                    actors=1, in_flight=1, max_attempts=3, make_task=lambda shard: shard,
                                    events=events).run([s for s in shards if s.variant.model != "B"], "A",
                                                       on_ready=lambda: None)
                assert sorted(report.done) == ["a0", "c0", "c1"] and not report.gave_up
                assert events.lost == ["actor-1", "actor-2"] and events.failed_models == []
                continue
            events = _Events()
            dispatcher = Dispatcher(lambda name: remote.options(max_restarts=0).remote(name, str(folder)),
                                    actors=1, in_flight=1, max_attempts=3, make_task=lambda shard: shard,
                                    events=events)
            report = dispatcher.run(shards, "A", on_ready=lambda: None)
            loads = (folder / "loads").read_text().split("\n")
            assert sorted(report.done) == ["a0", "c0", "c1"], case
            assert sorted(report.gave_up) == ["b0", "b1", "b2", "b3"], case
            assert all("header too large" in error for error in report.gave_up.values())
            assert events.failed_models == ["B"], case
            assert sum(line.endswith(" B") for line in loads) == 1, (case, loads)  # tried once, not per shard
            assert events.lost == (["actor-1"] if case == "replacement" else []), case
    finally:
        ray.shutdown()
