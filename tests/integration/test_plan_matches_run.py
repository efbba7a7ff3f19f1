"""`sdbatch plan` predicts the loads a real run makes: the estimate and the dispatcher hand out shards by one rule."""

import json
import re

import numpy as np
import pytest
from PIL import Image

from tests.support.util import REPO, run_cli, write_manifest

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("tiny_cache")]
JOB = str(REPO / "jobs" / "demo.toml")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """Four variants of one shard each, over two models: two LoRAs and a ControlNet on the first model, a third
    LoRA on the second. Whichever actor is warm first and whichever shard comes back first, every variant
    goes to one actor and the second model to one actor: the loads do not depend on timing."""
    from sdbatch.render.tiny.build import write_tiny_model
    from tests.support.tiny_variants import write_tiny_controlnet, write_tiny_lora

    root = tmp_path_factory.mktemp("plan-vs-run")
    other_model = write_tiny_model(root / "other-model", seed=1)
    loras = [write_tiny_lora(root / f"style{n}.safetensors", seed=n + 1) for n in range(3)]
    controlnet = write_tiny_controlnet(root / "cn", seed=1)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / "edge.png")
    plain = {"model": None, "controlnet": None, "control_image": None}
    rows = [{**plain, "prompt": f"a cat <lora:{loras[0]}:0.8> {k}"} for k in range(2)]
    rows += [{**plain, "prompt": f"a fox <lora:{loras[1]}:0.8> {k}"} for k in range(2)]
    rows += [{**plain, "prompt": f"a dog {k}", "controlnet": str(controlnet), "control_image": str(root / "edge.png")}
             for k in range(2)]
    rows += [{**plain, "prompt": f"an owl <lora:{loras[2]}:0.8> {k}", "model": str(other_model)} for k in range(2)]
    return write_manifest(root / "m.parquet", [{"id": f"r{n}", **row} for n, row in enumerate(rows)])


def test_plan_predicts_the_loads_of_a_real_two_actor_run(manifest, tmp_path):
    flags = ["--job", JOB, "--steps", "1", "--width", "32", "--height", "32", "--shard-size", "8"]
    planned = run_cli("plan", str(manifest), *flags, "--gpus", "2", cwd=tmp_path)
    assert planned.returncode == 0, planned.stdout + planned.stderr
    found = re.search(r"(\d+) model, (\d+) LoRA, (\d+) ControlNet", " ".join(planned.stdout.split()))
    predicted = tuple(int(n) for n in found.groups())
    assert predicted == (3, 3, 1)  # two warm-ups and one switch to the second model; each variant once

    ran = run_cli("submit", str(manifest), "--output", str(tmp_path / "out"), *flags, "--actors", "2", cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    last = json.loads((tmp_path / "out" / "_SUCCESS.json").read_text())["last_run"]
    assert (last["model_loads"], last["lora_loads"], last["controlnet_loads"]) == predicted, last["loads_per_actor"]
