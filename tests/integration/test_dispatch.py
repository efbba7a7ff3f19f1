"""The Dispatcher on a real local Ray with light actors (no torch): replacements, a model that cannot load,
a pool that cannot start or loses every actor, a hung shard."""

from __future__ import annotations

import os
import time

import psutil
import pytest

from sdbatch.plan.shards import Shard, Variant
from sdbatch.tasks import ShardResult


class _Events:
    def __init__(self):
        self.lost: list[str] = []
        self.failed_models: list[str] = []
        self.notices: list[str] = []

    def shard_done(self, result) -> None: ...
    def shard_retry(self, shard_id: str, error: str) -> None: ...
    def shard_gave_up(self, shard_id: str, error: str) -> None: ...
    def waiting(self, message: str) -> None:
        self.notices.append(message)

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


def _variant(model: str = "A") -> Variant:
    return Variant(model, 64, 64, 2, None, 7.5, (), ())


class _Worker:  # shipped to the workers by value; `folder` holds what the test sets up and reads back
    def __init__(self, name: str, folder: str):
        self.name, self.folder = name, folder

    def warm(self, model: str) -> dict:
        return {"pid": os.getpid(), "model_loads": 1}

    def render_shard(self, shard) -> ShardResult:
        once = os.path.join(self.folder, f"{shard.shard_id}.once")
        if os.path.exists(os.path.join(self.folder, f"{shard.shard_id}.die")) and not os.path.exists(once):
            open(once, "w").close()
            os._exit(1)
        if os.path.exists(os.path.join(self.folder, f"{shard.shard_id}.hang")) and not os.path.exists(once):
            with open(once, "w") as f:
                f.write(str(os.getpid()))
            time.sleep(3600)  # a deadlocked call: alive, answering nothing
        time.sleep(0.05)
        return ShardResult(shard.shard_id, self.name, True, 1, 0, 1, 0, 0.05, actor=self.name)


@pytest.mark.slow
def test_a_pool_with_no_live_actor_says_so_and_stops_after_the_start_timeout(tmp_path):
    """Actors asking for what the cluster never has: the run says why at intervals and stops (before anything is
    ready: on_ready is never called). Then a run whose only actor dies and whose replacement finds no room: the
    same, mid-run, with the shards done so far reported."""
    import ray

    from sdbatch.engine.cluster import connect
    from sdbatch.engine.dispatch import Dispatcher
    from sdbatch.engine.watch import Watch
    from sdbatch.errors import RunStopped

    shards = [Shard(f"s{i}", _variant(), i, 1) for i in range(6)]
    watch = Watch(start_timeout=4.0, notice_seconds=1.0, actor_needs="1 nowhere")
    connect(None)
    try:
        remote = ray.remote(num_cpus=0, max_restarts=0)(_Worker)
        events, ready = _Events(), []
        never = Dispatcher(lambda name: remote.options(resources={"nowhere": 1}).remote(name, str(tmp_path)),
                           actors=2, in_flight=1, max_attempts=3, make_task=lambda shard: shard, events=events,
                           watch=watch)
        started = time.monotonic()
        with pytest.raises(RunStopped) as stopped:
            never.run(shards, "A", on_ready=lambda: ready.append(True))
        assert 4.0 < time.monotonic() - started < 30.0 and not ready
        message = " ".join(str(stopped.value).split())
        assert "2 actor(s) waiting for room on the cluster (each asks for 1 nowhere)" in message
        assert "run.start_timeout" in message and "rerun the same command to resume" in message
        assert len(events.notices) >= 2 and all("no live actor for" in n for n in events.notices)

        (tmp_path / "s2.die").touch()
        events = _Events()
        placed = iter([{}])  # the first actor fits; its replacement asks for what is never there

        def make(name):
            return remote.options(**next(placed, {"resources": {"nowhere": 1}})).remote(name, str(tmp_path))

        lost_all = Dispatcher(make, actors=1, in_flight=1, max_attempts=3, make_task=lambda shard: shard,
                              events=events, watch=watch)
        with pytest.raises(RunStopped, match="1 actor.s. waiting for room"):
            lost_all.run(shards, "A", on_ready=lambda: None)
        assert events.lost == ["actor-1"] and lost_all.report.done == ["s0", "s1"]
        assert any("no live actor for" in n for n in events.notices)
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_an_actor_whose_shard_hangs_is_killed_and_replaced_and_the_shard_requeued(tmp_path):
    """s3 hangs on its first try. Past the threshold (the floor here: its peers take 0.05 s) the actor is killed,
    its process ends, a replacement starts, and the shard is rendered on its second try."""
    import ray

    from sdbatch.engine.cluster import connect
    from sdbatch.engine.dispatch import Dispatcher
    from sdbatch.engine.watch import Watch

    (tmp_path / "s3.hang").touch()
    shards = [Shard(f"s{i}", _variant(), i, 1) for i in range(8)]
    connect(None)
    try:
        remote = ray.remote(num_cpus=0, max_restarts=0)(_Worker)
        events = _Events()
        dispatcher = Dispatcher(lambda name: remote.remote(name, str(tmp_path)), actors=1, in_flight=2,
                                max_attempts=3, make_task=lambda shard: shard, events=events,
                                watch=Watch(hung_shard_seconds=3.0, hung_shard_factor=10.0))
        report = dispatcher.run(shards, "A", on_ready=lambda: None)
        hung_pid = int((tmp_path / "s3.once").read_text())
        hung = [psutil.Process(hung_pid)] if psutil.pid_exists(hung_pid) else []
        assert not psutil.wait_procs(hung, timeout=60)[1], "the hung actor's process was not killed"
    finally:
        ray.shutdown()
    assert sorted(report.done) == [s.shard_id for s in shards] and not report.gave_up
    assert report.actors_hung == 1 and events.lost == ["actor-1"] and report.actors_started == 2
    assert dispatcher.attempts["s3"] == 2
