"""Per-row LoRAs and ControlNets in the manifest: tags, list columns, lookups and early refusals."""

import pyarrow as pa
import pytest

from sdbatch.errors import ManifestError
from sdbatch.manifest import normalize
from sdbatch.plan import plan_shards
from sdbatch.settings import RowDefaults


@pytest.fixture
def assets(tmp_path):
    loras = tmp_path / "loras"
    loras.mkdir()
    (loras / "style.safetensors").write_bytes(b"x")
    (loras / "ink.safetensors").write_bytes(b"y")
    cn = tmp_path / "cn"
    cn.mkdir()
    (cn / "config.json").write_text("{}")
    image = tmp_path / "edge.png"
    image.write_bytes(b"png")
    return {"loras": loras, "cn": cn, "image": image, "root": tmp_path}


def _norm(rows, assets, **defaults):
    return normalize(pa.Table.from_pylist(rows), RowDefaults(model="m", lora_dir=str(assets["loras"]), **defaults))


def test_inline_tags_are_removed_from_the_prompt_and_merged_into_loras(assets):
    row = {"id": "a", "prompt": "a cat <lora:style:0.6> in a hat <lora:ink>",
           "loras": [{"path": str(assets["loras"] / "ink.safetensors"), "weight": 0.3}]}
    out = _norm([row], assets).to_pylist()[0]
    assert out["prompt"] == "a cat in a hat"
    assert out["loras"] == [
        {"path": str((assets["loras"] / "ink.safetensors").resolve()), "weight": 0.3},
        {"path": str((assets["loras"] / "style.safetensors").resolve()), "weight": 0.6},
        {"path": str((assets["loras"] / "ink.safetensors").resolve()), "weight": 1.0},
    ]


def test_hub_ids_and_s3_references_pass_through(assets):
    rows = [{"id": "a", "prompt": "x", "loras": [{"path": "someone/some-lora", "weight": None},
                                                  {"path": "s3://b/l.safetensors", "weight": 0.5}]}]
    out = _norm(rows, assets).column("loras").to_pylist()[0]
    assert out == [{"path": "someone/some-lora", "weight": 1.0}, {"path": "s3://b/l.safetensors", "weight": 0.5}]


@pytest.mark.parametrize("row, needles", [
    ({"id": "r1", "prompt": "x <lora:nope:0.5>"}, ["column 'prompt'", "row id 'r1'", "'nope' is not in --lora-dir"]),
    ({"id": "r2", "prompt": "x", "loras": [{"path": "/no/such/file.safetensors", "weight": 1.0}]},
     ["column 'loras'", "row id 'r2'", "/no/such/file.safetensors does not exist"]),
    ({"id": "r3", "prompt": "x <lora:style:heavy>"}, ["row id 'r3'", "not a number"]),
    ({"id": "r4", "prompt": "x", "controlnets": [{"model": "CN", "image": "/no/edge.png", "scale": 1.0}]},
     ["column 'controlnets'", "row id 'r4'", "/no/edge.png does not exist"]),
])
def test_bad_references_are_refused_naming_row_and_path(assets, row, needles):
    if "controlnets" in row:
        row["controlnets"][0]["model"] = str(assets["cn"])
    with pytest.raises(ManifestError) as info:
        _norm([row], assets)
    for needle in needles:
        assert needle in str(info.value)


def test_a_controlnet_folder_needs_a_config(assets):
    bad = assets["root"] / "notcn"
    bad.mkdir()
    row = {"id": "a", "prompt": "x", "controlnets": [{"model": str(bad), "image": str(assets["image"]), "scale": 1}]}
    with pytest.raises(ManifestError, match="has no config.json"):
        _norm([row], assets)


def test_simple_controlnet_columns_become_the_list(assets):
    rows = [{"id": "a", "prompt": "x", "controlnet": str(assets["cn"]), "control_image": str(assets["image"]),
             "controlnet_scale": 0.5},
            {"id": "b", "prompt": "y", "controlnet": None, "control_image": None, "controlnet_scale": None}]
    table = _norm(rows, assets)
    assert "controlnet" not in table.column_names and "control_image" not in table.column_names
    assert table.column("controlnets").to_pylist() == [
        [{"model": str(assets["cn"].resolve()), "image": str(assets["image"].resolve()), "scale": 0.5}], []]


def test_both_controlnet_forms_at_once_are_refused(assets):
    row = {"id": "a", "prompt": "x", "controlnets": [], "controlnet": "x"}
    with pytest.raises(ManifestError, match="either the 'controlnets' list column or the simple columns"):
        _norm([row], assets)


def test_variants_split_on_lora_weight_and_controlnet_model_but_not_on_the_image(assets):
    image2 = assets["root"] / "edge2.png"
    image2.write_bytes(b"png2")
    cn = str(assets["cn"])
    rows = [{"id": f"r{i}", "prompt": f"p{i}", "loras": [{"path": "style", "weight": w}],
             "controlnets": [{"model": cn, "image": str(img), "scale": 1.0}]}
            for i, (w, img) in enumerate([(0.5, assets["image"]), (0.5, image2), (0.8, assets["image"])])]
    plan = plan_shards(_norm(rows, assets), 10)
    assert sorted(len(s.rows) for s in plan.shards) == [1, 2]
