"""The dry-run estimate, pure: loads from replaying the dispatch policy, time and cost arithmetic."""

import random

import pytest

from sdbatch.errors import EstimateError
from sdbatch.plan.shards import Plan, Shard, Variant
from sdbatch.run.estimate import Rates, duration, estimate, simulate
from tests.support.util import run_cli, tiny_rows, write_manifest


def _variant(n: int, model: str = "m", controlnets: int = 0) -> Variant:
    nets = tuple((f"/cn/c{k}", 1.0) for k in range(controlnets))
    return Variant(model, 64, 64, 2, None, 7.5, ((f"/loras/l{n}.safetensors", 1.0),), nets)


def _plan(variants: list[Variant], shards_each: int, rows: int = 10, shuffle: int | None = 0) -> Plan:
    shards = [(v, k) for v in variants for k in range(shards_each)]
    if shuffle is not None:
        random.Random(shuffle).shuffle(shards)
    built = tuple(Shard(f"{n:06d}", v, 0, rows) for n, (v, _) in enumerate(shards))
    return Plan(built, rows * len(built))


def test_affinity_loads_each_variant_about_once_and_plan_order_far_more():
    plan = _plan([_variant(n) for n in range(8)], 5)
    kept = simulate(plan, actors=2, affinity=True)
    swapped = simulate(plan, actors=2, affinity=False)
    assert 8 <= kept.lora_loads <= 8 + 2
    assert swapped.lora_loads > 2 * kept.lora_loads
    assert kept.model_loads == 2  # each actor warms the one model once


def test_controlnets_count_per_net_and_model_switches_are_loads():
    plan = _plan([_variant(0, "a", controlnets=2), _variant(1, "b", controlnets=2)], 1, shuffle=None)
    one = simulate(plan, actors=1)
    assert (one.model_loads, one.lora_loads, one.controlnet_loads) == (2, 2, 4)  # warm a, switch to b
    assert simulate(plan, actors=4).actors == 2  # no more actors than shards


def test_the_last_shards_go_to_idle_actors_as_the_dispatcher_sends_them():
    """Near the end an actor with a shard in flight takes no second one (policy.depth): the shard left waits
    for the actor that frees up first, not behind a long one."""
    variant = _variant(0)
    sizes = [10, 50, 10, 10, 10]  # actor 0 gets 10 and 50 rows, actor 1 two of 10; one of 10 is left
    shards = tuple(Shard(f"{n:06d}", variant, 0, rows) for n, rows in enumerate(sizes))
    result = simulate(Plan(shards, sum(sizes)), actors=2)
    assert result.makespan == pytest.approx(60.0)  # queued behind the 50 rows it would end at 70


def test_wall_time_gpu_hours_and_cost():
    plan = _plan([_variant(0)], 10, rows=10)  # 100 rows in 10 shards
    result = estimate(plan, gpus=2, rates=Rates(images_per_second=2.0, gpu_hour_price=3.6))
    assert result.wall_seconds == pytest.approx(25.0)  # 5 shards of 10 rows each per GPU at 2 images/s
    assert result.render_gpu_hours == pytest.approx(100 / 2 / 3600)
    assert result.billed_gpu_hours == pytest.approx(2 * 25 / 3600)
    assert result.cost == pytest.approx(0.05) and result.cost_per_1000 == pytest.approx(0.5)
    three = estimate(_plan([_variant(0)], 3), gpus=2, rates=Rates(images_per_second=1.0))
    assert three.wall_seconds == pytest.approx(20.0)  # shards are the unit: one GPU does two of three
    slower = estimate(_plan([_variant(n) for n in range(4)], 1), gpus=1, rates=Rates(1.0, None, load_seconds=5))
    assert slower.wall_seconds == pytest.approx(40 + 4 * 5) and slower.cost is None


def test_without_a_rate_only_counts_and_bad_rates_are_refused():
    result = estimate(_plan([_variant(0), _variant(1)], 2), gpus=3)
    assert (result.rows, result.variants, result.shards, result.gpus) == (40, 2, 4, 3)
    assert result.wall_seconds is None and result.cost is None and result.dispatch.lora_loads >= 2
    for rates in (Rates(images_per_second=0), Rates(images_per_second=-1), Rates(1.0, gpu_hour_price=-2)):
        with pytest.raises(EstimateError):
            estimate(result_plan := _plan([_variant(0)], 1), gpus=1, rates=rates)
    with pytest.raises(EstimateError, match="--gpus 0"):
        estimate(result_plan, gpus=0)


def test_duration_reads_like_a_person_would_say_it():
    assert [duration(s) for s in (12, 600, 3 * 3600 + 300, 50 * 3600)] == ["12 s", "10 min", "3 h 05 min", "2 d 02 h"]


def test_plan_command_prints_the_estimate_and_writes_nothing(tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", tiny_rows(40))
    before = sorted(tmp_path.rglob("*"))
    bare = run_cli("plan", str(manifest), "--model", "tiny:sd15", "--shard-size", "8", "--gpus", "2", cwd=tmp_path)
    assert bare.returncode == 0, bare.stderr
    text = " ".join(bare.stdout.split())
    assert "40" in text and "no rate given" in text and "2 model, 0 LoRA" in text
    priced = run_cli("plan", str(manifest), "--model", "tiny:sd15", "--shard-size", "8", "--gpus", "2",
                     "--images-per-second", "2", "--gpu-hour-price", "3.6", cwd=tmp_path)
    text = " ".join(priced.stdout.split())
    assert priced.returncode == 0 and "per 1,000 images" in text and "12 s of rendering" in text
    assert sorted(tmp_path.rglob("*")) == before


def test_hires_and_img2img_rows_cost_what_their_passes_do():
    from dataclasses import replace

    from sdbatch.plan.shards import Hires

    plain = _variant(0)  # 2 steps at 64x64
    hires = replace(plain, hires=Hires(scale=2.0, steps=None, strength=0.5, upscaler="latent"))
    img2img = replace(plain, pipeline="img2img", strength=0.5)
    assert (plain.cost(), hires.cost(), img2img.cost()) == (1.0, 5.0, 0.5)  # hires: + 2^2 x 2/2 steps
    times = {name: simulate(_plan([v], 4), actors=1).makespan for name, v in
             (("plain", plain), ("hires", hires), ("img2img", img2img))}
    assert times["hires"] == pytest.approx(5 * times["plain"]) and times["img2img"] == pytest.approx(times["plain"] / 2)
    rated = estimate(_plan([hires], 4), 1, Rates(images_per_second=1.0))
    assert rated.render_gpu_hours == pytest.approx(4 * 10 * 5 / 3600)
