"""Planning is pure and deterministic: same manifest and settings, same shards, ids and seeds."""

import random

import pyarrow as pa

from sdbatch.manifest.normalize import normalize
from sdbatch.plan.shards import Shard, Variant, plan_shards, shard_rows, shards_except
from sdbatch.settings import RowDefaults


def _manifest(order: list[int]) -> pa.Table:
    rows = [{"id": f"r{i}", "prompt": f"p{i}", "steps": 10 if i % 3 else 20, "width": 64 if i % 2 else 128}
            for i in order]
    return normalize(pa.Table.from_pylist(rows), RowDefaults(model="m"))


def test_same_input_gives_identical_plan():
    first = plan_shards(_manifest(list(range(50))), 4)
    again = plan_shards(_manifest(list(range(50))), 4)
    assert first == again


def test_shards_never_mix_variants_and_cover_every_row_once():
    table = _manifest(list(range(50)))
    plan, planned = plan_shards(table, 4)
    seen = []
    for shard in plan.shards:
        rows = shard_rows(planned, shard)
        assert 1 <= len(rows) <= 4
        assert {(r["steps"], r["width"]) for r in rows} == {(shard.variant.steps, shard.variant.width)}
        seen += [r["id"] for r in rows]
    assert sorted(seen) == sorted(f"r{i}" for i in range(50))
    assert len(plan.variants()) == 4


def test_seeds_do_not_depend_on_row_order():
    order = list(range(50))
    shuffled = order[:]
    random.Random(3).shuffle(shuffled)
    a, b = _manifest(order), _manifest(shuffled)
    seeds_a = dict(zip(a.column("id").to_pylist(), a.column("seed").to_pylist()))
    seeds_b = dict(zip(b.column("id").to_pylist(), b.column("seed").to_pylist()))
    assert seeds_a == seeds_b
    assert len(set(seeds_a.values())) == 50


def test_shard_ids_are_unique_and_sortable():
    plan, _ = plan_shards(_manifest(list(range(50))), 3)
    ids = [s.shard_id for s in plan.shards]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_a_column_constant_in_one_chunk_and_varied_in_another_keeps_each_shard_to_its_variant():
    # Chunks of 20: the model is m1 throughout the first, varies in the second, is m3 throughout the third.
    models = ["m1"] * 20 + ["m1" if i % 3 else "m2" for i in range(20)] + ["m3"] * 20
    rows = [{"id": f"r{i}", "prompt": "p", "steps": 10 + i % 2, "model": models[i], "vae": None if i < 30 else "v"}
            for i in range(60)]
    table = normalize(pa.Table.from_pylist(rows), RowDefaults(model="m"))
    plan, planned = plan_shards(table, 4, chunk_rows=20)
    for shard in plan.shards:
        got = {(r["model"], r["steps"], r["vae"]) for r in shard_rows(planned, shard)}
        assert got == {(shard.variant.model, shard.variant.steps, shard.variant.vae)}
    assert {(v.model, v.steps, v.vae) for v in plan.variants()} == {(r["model"], r["steps"], r["vae"]) for r in rows}


def test_shards_except_keeps_the_plan_order_of_the_shards_not_settled():
    variant = Variant("m", 64, 64, 2, None, 7.5, (), ())
    shards = [Shard(f"{n:06d}", variant, n, 1) for n in range(5)]
    left = shards_except(shards, pa.array(["000003", "000000", "999999"], pa.string()))
    assert [s.shard_id for s in left] == ["000001", "000002", "000004"]
    assert shards_except(shards, pa.array([], pa.string())) == shards
