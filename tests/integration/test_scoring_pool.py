"""The score actors on a real local Ray never wait forever: steps that cannot load stop the pool at once, with
the reason; a pool that can never be placed stops after run.start_timeout."""

from __future__ import annotations

import pytest

from sdbatch.engine import cluster
from sdbatch.engine.scoring import RemoteScoreActor, ScoreWork, score_on_ray
from sdbatch.errors import ModelLoadError, RunStopped
from sdbatch.settings import RunSettings, ScoreSettings
from sdbatch.store.local import LocalStore

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("tiny_cache")]
WORK = [ScoreWork("000000", "a1", (), ("clip",))]


@pytest.fixture
def private_ray():
    cluster.connect(None)
    yield
    cluster.shutdown()


def test_steps_that_cannot_load_stop_the_pool_naming_why(tmp_path, private_ray):
    settings = ScoreSettings(steps=("clip",), clip_model=str(tmp_path / "no-such-clip"))

    def make():
        return RemoteScoreActor.options(num_cpus=1).remote(LocalStore(str(tmp_path)), settings, "files", "cpu",
                                                           None, 1)

    with pytest.raises(ModelLoadError, match="the score steps cannot start: .*no-such-clip"):
        score_on_ray(WORK, make, actors=1)


def test_a_pool_that_can_never_be_placed_stops_after_the_start_timeout(tmp_path, private_ray):
    settings = ScoreSettings(steps=("phash",))

    def make():  # a GPU on a machine without one: Ray keeps it pending for ever
        return RemoteScoreActor.options(num_gpus=1).remote(LocalStore(str(tmp_path)), settings, "files", "cuda",
                                                           None, None)

    with pytest.raises(RunStopped, match=r"did not start within 2 s \(run.start_timeout\)"):
        score_on_ray(WORK, make, actors=1, limits=RunSettings(start_timeout=2))
