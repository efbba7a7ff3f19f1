"""Per-row LoRAs and ControlNets in the manifest: tags, list columns, lookups and early refusals."""

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from sdbatch.errors import ManifestError
from sdbatch.manifest.normalize import normalize
from sdbatch.manifest.references import OTHER_WHITESPACE, Resolver
from sdbatch.plan.shards import plan_shards
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
    plan, _ = plan_shards(_norm(rows, assets), 10)
    assert sorted(s.size for s in plan.shards) == [1, 2]


def test_the_whitespace_the_prompt_check_knows_is_what_str_split_splits_on():
    every = {chr(c) for c in range(0x110000) if chr(c).isspace()}
    assert set(OTHER_WHITESPACE) | {" "} == every


def test_a_rows_list_entries_are_reported_before_its_tags_and_rows_in_order(assets):
    rows = [{"id": "a", "prompt": "ok <lora:style>", "loras": [{"path": "ink", "weight": 0.5}]},
            {"id": "b", "prompt": "x <lora:gone:1> <lora:style:lots>", "loras": [{"path": "", "weight": 1.0},
                                                                                 {"path": "ink", "weight": None}]},
            {"id": "c", "prompt": "fine", "loras": [{"path": "missing", "weight": 1.0}]},
            {"id": "d", "prompt": "fine", "loras": None}]
    with pytest.raises(ManifestError) as info:
        _norm(rows, assets)
    lines = str(info.value).splitlines()[1:]
    root = assets["loras"]
    assert lines == [
        "  - column 'loras', row id 'b' (row 1): each entry needs a 'path' (and optionally a 'weight'); "
        "got {'path': '', 'weight': 1.0}",
        f"  - column 'prompt', row id 'b' (row 1): LoRA 'gone' is not in --lora-dir {root} (looked for "
        f"{root / 'gone'}.safetensors); fix the name",
        "  - column 'prompt', row id 'b' (row 1): <lora:style:lots> has a weight that is not a number; write e.g. "
        "<lora:style:0.8>",
        f"  - column 'loras', row id 'c' (row 2): LoRA 'missing' is not in --lora-dir {root} (looked for "
        f"{root / 'missing'}.safetensors); fix the name",
    ]


def test_many_rows_sharing_references_resolve_each_once_and_keep_their_lists(assets, monkeypatch):
    calls = Counter()
    for method in ("_resolve_lora", "controlnet", "image"):
        original = getattr(Resolver, method)

        def counted(self, reference, _original=original, _method=method):
            calls[_method, reference] += 1
            return _original(self, reference)

        monkeypatch.setattr(Resolver, method, counted)
    image2 = assets["root"] / "edge2.png"
    image2.write_bytes(b"png2")
    cn, images = str(assets["cn"]), [str(assets["image"]), str(image2)]
    rows = [{"id": f"r{i}", "prompt": "p  q" if i % 3 else "p <lora:ink:0.2>",
             "loras": [{"path": "style", "weight": i % 2}] * (i % 3),
             "controlnets": [{"model": cn, "image": images[i % 2], "scale": None}] if i % 4 else None}
            for i in range(3000)]
    table = pa.Table.from_pylist(rows)
    out = normalize(pa.concat_tables([table.slice(0, 1000), table.slice(1000)]),
                    RowDefaults(model="m", lora_dir=str(assets["loras"])))
    assert max(calls.values()) == 1
    style, ink = (str((assets["loras"] / f"{n}.safetensors").resolve()) for n in ("style", "ink"))
    loras, nets = out.column("loras").to_pylist(), out.column("controlnets").to_pylist()
    for i in (0, 1, 2, 3, 2998, 2999):
        listed = [{"path": style, "weight": float(i % 2)}] * (i % 3)
        assert loras[i] == (listed if i % 3 else [{"path": ink, "weight": 0.2}])
        assert out.column("prompt")[i].as_py() == ("p q" if i % 3 else "p")
        image = str(Path(images[i % 2]).resolve())
        assert nets[i] == ([{"model": str(assets["cn"].resolve()), "image": image, "scale": 1.0}] if i % 4 else [])


def test_simple_controlnet_columns_of_any_shape_keep_row_by_row_results(assets):
    rows = [{"id": f"r{i}", "prompt": "x", "controlnet": [None, "", str(assets["cn"])][i % 3],
             "control_image": str(assets["image"]) if i % 3 == 2 else None} for i in range(7)]
    nets = _norm(rows, assets).column("controlnets").to_pylist()
    assert [len(n) for n in nets] == [0, 0, 1, 0, 0, 1, 0]
    rows[5]["control_image"] = None
    with pytest.raises(ManifestError, match=r"row id 'r5' \(row 5\): each ControlNet needs a 'model' and an 'image'"):
        _norm(rows, assets)
