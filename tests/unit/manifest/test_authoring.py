"""Manifest authoring: .txt, .csv, .jsonl and YAML templates (slots, wildcards, random mode, caps)."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sdbatch.errors import ManifestError
from sdbatch.manifest.authoring import AuthoringOptions, build_manifest, prompts_table
from sdbatch.manifest.normalize import normalize
from sdbatch.settings import RowDefaults
from tests.support.util import REPO, run_cli


def _template(tmp_path: Path, text: str, wildcards: dict[str, str] | None = None) -> Path:
    for name, lines in (wildcards or {}).items():
        (tmp_path / "wildcards").mkdir(exist_ok=True)
        (tmp_path / "wildcards" / f"{name}.txt").write_text(lines)
    path = tmp_path / "t.yaml"
    path.write_text(text)
    return path


def _build(path: Path, **options):
    return build_manifest(path, AuthoringOptions(**options)).table


def test_3_by_2_template_with_2_seeds_makes_12_rows_with_the_choices_as_columns(tmp_path):
    path = _template(tmp_path, 'prompt: "a {color} {animal}"\nslots:\n  color: [red, green, blue]\n'
                               "  animal: [cat, dog]\n")
    table = _build(path, seeds=2)
    assert table.num_rows == 12
    rows = table.to_pylist()
    assert {(r["color"], r["animal"]) for r in rows} == {(c, a) for c in ("red", "green", "blue") for a in ("cat", "dog")}
    assert all(r["prompt"] == f"a {r['color']} {r['animal']}" for r in rows)
    assert [r["id"] for r in rows[:3]] == ["p0000-s0", "p0000-s1", "p0001-s0"]
    assert [r["seed_index"] for r in rows[:4]] == [0, 1, 0, 1] and rows[-1]["prompt_index"] == 5
    assert normalize(table, RowDefaults()).num_rows == 12  # a valid manifest; choices ride along as labels


def test_inline_alternatives_wildcards_and_manifest_column_slots(tmp_path):
    path = _template(tmp_path, 'prompt: "a {red|green} __animal__, {photo | oil painting}"\n'
                               'negative_prompt: "blurry __animal__"\nslots:\n  steps: [10, 20]\n'
                               "columns:\n  width: 64\n  batch: night-1\n",
                     wildcards={"animal": "# animals\ncat\n\nsnow leopard\n"})
    table = _build(path)
    assert table.num_rows == 2 * 2 * 2 * 2
    assert table.column_names[:7] == ["id", "prompt", "negative_prompt", "steps", "choice_1", "animal", "choice_2"]
    row = table.to_pylist()[-1]
    assert row["prompt"] == "a green snow leopard, oil painting" and row["negative_prompt"] == "blurry snow leopard"
    assert (row["steps"], row["width"], row["batch"]) == (20, 64, "night-1")
    assert str(table.schema.field("steps").type) == "int64"  # typed, so the renderer gets integers
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "animal.txt").write_text("owl\n")
    assert set(_build(path, wildcards=other).column("animal").to_pylist()) == {"owl"}


def test_random_mode_is_deterministic_distinct_and_seeded(tmp_path):
    text = ('prompt: "{a|b|c|d} {e|f|g|h} {i|j|k|l}"\nmode: random\ncount: 10\nseed: {seed}\n')
    first = _build(_template(tmp_path, text.replace("{seed}", "7"))).column("prompt").to_pylist()
    again = _build(_template(tmp_path, text.replace("{seed}", "7"))).column("prompt").to_pylist()
    other = _build(_template(tmp_path, text.replace("{seed}", "8"))).column("prompt").to_pylist()
    assert first == again and first != other
    assert len(first) == len(set(first)) == 10
    huge = 'prompt: "{x}"\nslots:\n  x: [' + ", ".join(map(str, range(100))) + ']\nmode: random\ncount: 3\n'
    assert _build(_template(tmp_path, huge)).num_rows == 3
    too_many = _template(tmp_path, 'prompt: "{a|b}"\nmode: random\ncount: 5\n')
    with pytest.raises(ManifestError, match="more than the 2 distinct combinations"):
        _build(too_many)


def test_the_row_cap_refuses_with_the_count_unless_truncating(tmp_path):
    alternatives = "{" + "|".join(f"w{n}" for n in range(100)) + "}"
    path = _template(tmp_path, f'prompt: "{alternatives} {alternatives} {alternatives}"\n')
    with pytest.raises(ManifestError, match=r"would make 2,000,000 rows .* over --max-rows 1,000,000.*--truncate"):
        _build(path, seeds=2)
    kept = build_manifest(path, AuthoringOptions(seeds=3, max_rows=10, truncate=True))
    assert kept.table.num_rows == 10 and "truncated to the first 10 of 3,000,000 rows" in kept.summary
    assert kept.table.column("id").to_pylist()[-1] == "p000003-s0"  # ids sized for all 1,000,000 prompts


def test_csv_carries_columns_and_keeps_text_as_text(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('id,prompt,negative_prompt,steps,guidance_scale,style\n'
                    'a,"a cat, sitting",blurry,20,7.5,ink\nb,1984,,,,\n')
    table = _build(path, seeds=2)
    rows = table.to_pylist()
    assert [r["id"] for r in rows] == ["a-s0", "a-s1", "b-s0", "b-s1"]
    assert rows[0]["prompt"] == "a cat, sitting" and rows[2]["prompt"] == "1984"
    assert (rows[0]["steps"], rows[0]["guidance_scale"], rows[0]["style"], rows[2]["steps"]) == (20, 7.5, "ink", None)
    normalized = normalize(table, RowDefaults(steps=30)).to_pylist()
    assert normalized[0]["steps"] == 20 and normalized[2]["steps"] == 30  # empty cell: the job's default


def test_jsonl_takes_keys_from_every_record(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [{"prompt": "a"}, {"prompt": "b", "width": 64, "mood": "calm"}]))
    rows = _build(path, seed_start=5).to_pylist()
    assert rows[0] == {"id": "p0000-s0", "prompt": "a", "width": None, "mood": None, "prompt_index": 0,
                       "seed_index": 0, "seed": 5}
    assert rows[1]["width"] == 64 and rows[1]["mood"] == "calm"
    path.write_text('{"prompt": "a"}\n{"prompt": 3\n')
    with pytest.raises(ManifestError, match="line 2 is not JSON"):
        _build(path)
    path.write_text('{"prompt": "a", "steps": 2}\n{"prompt": "b", "steps": "many"}\n')
    with pytest.raises(ManifestError, match="column 'steps' mixes types"):
        _build(path)


BAD_TEMPLATES = {
    "unknown slot": ('prompt: "a {colour} cat"\nslots:\n  color: [red]\n', "slots has no 'colour'"),
    "unquoted braces": ("prompt: {red|green} cat\n", "not valid YAML"),
    "missing wildcard": ('prompt: "a __bird__"\n', "wildcard __bird__ has no file"),
    "reserved name": ('prompt: "{id}"\nslots:\n  id: [a]\n', "slot name 'id' is taken"),
    "unknown key": ('prompt: "x"\nslot: {}\n', "unknown key(s) slot"),
    "random without count": ('prompt: "{a|b}"\nmode: random\n', "needs count: N"),
    "bad slot values": ('prompt: "{c}"\nslots:\n  c: red\n', "give a list of values"),
    "nested": ('prompt: "{__animal__|dog}"\n', "nests a wildcard"),
}


@pytest.mark.parametrize("case", sorted(BAD_TEMPLATES))
def test_bad_templates_name_the_problem_and_the_fix(tmp_path, case):
    text, needle = BAD_TEMPLATES[case]
    with pytest.raises(ManifestError) as raised:
        _build(_template(tmp_path, text))
    assert needle in str(raised.value)


def test_text_files_keep_their_ids_and_the_demo_manifest():
    table = prompts_table(["x", "y"], seeds=2)
    assert table.column_names == ["id", "prompt", "prompt_index", "seed_index"]
    assert table.column("id").to_pylist() == ["p0000-s0", "p0000-s1", "p0001-s0", "p0001-s1"]
    example = build_manifest(REPO / "manifests" / "prompts-example.txt", AuthoringOptions(seeds=4)).table
    assert example.num_rows == 24 and example.column("prompt_index").to_pylist()[-1] == 5


def test_cli_writes_the_example_template_and_refuses_over_the_cap(tmp_path):
    out = tmp_path / "grid.parquet"
    made = run_cli("manifest", "new", str(REPO / "manifests" / "template-example.yaml"), "-o", str(out), "--seeds", "2")
    assert made.returncode == 0, made.stderr
    table = pq.read_table(out)
    assert table.num_rows == 24 and {"color", "animal", "choice_1"} <= set(table.column_names)
    capped = run_cli("manifest", "new", str(REPO / "manifests" / "template-example.yaml"), "-o",
                     str(tmp_path / "capped.parquet"), "--seeds", "2", "--max-rows", "10")
    assert capped.returncode == 2 and "would make 24 rows" in " ".join(capped.stderr.split())
    assert not (tmp_path / "capped.parquet").exists()
