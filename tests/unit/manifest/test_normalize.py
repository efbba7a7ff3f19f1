"""Manifest validation and normalization: every error names the column, the row and the fix."""

import random

import pandas as pd
import pyarrow as pa
import pytest

from sdbatch.a1111.samplers import SAMPLERS
from sdbatch.errors import ManifestError
from sdbatch.manifest.guidance import GUIDANCE_COLUMNS
from sdbatch.manifest.normalize import (
    MANIFEST_COLUMNS,
    MAX_LISTED_PROBLEMS,
    RESULT_COLUMNS,
    derive_seed,
    duplicate_ids,
    normalize,
    read_manifest,
)
from sdbatch.manifest.problems import Notes
from sdbatch.manifest.references import LORA_TAG
from sdbatch.output.commits import RESULT_SCHEMA
from sdbatch.settings import RowDefaults
from tests.support.util import write_manifest

DEFAULTS = RowDefaults(model="tiny:sd15", steps=5, width=64, height=64, seed=7)


def _normalize(rows):
    return normalize(pa.Table.from_pylist(rows), DEFAULTS)


def test_defaults_ids_and_seeds_are_filled_in():
    table = _normalize([{"prompt": "a", "seed": None, "steps": None}, {"prompt": "b", "seed": 5, "steps": 9}])
    rows = table.to_pylist()
    assert [r["id"] for r in rows] == ["000000", "000001"]
    assert rows[0]["seed"] == derive_seed(7, "000000") and rows[1]["seed"] == 5
    assert rows[0]["steps"] == 5 and rows[1]["steps"] == 9
    assert rows[0]["model"] == "tiny:sd15" and rows[0]["width"] == 64
    assert rows[0]["negative_prompt"] == ""


def test_full_63_bit_seeds_are_kept_exactly():
    """Derived seeds use all 63 bits, and manifests rebuilt from images carry them: above 2**53 a float
    cannot hold them, so they must never pass through one (they once failed as "not a whole number")."""
    seeds = [2**63 - 1, 3839760927045813647, derive_seed(7, "x"), 2**53 + 1]
    table = _normalize([{"prompt": "a", "seed": seed} for seed in seeds])
    assert table.column("seed").to_pylist() == seeds
    assert _normalize([{"prompt": "a", "seed": 12.0}]).column("seed").to_pylist() == [12]
    with pytest.raises(ManifestError, match="12.5 is not a whole number"):
        _normalize([{"prompt": "a", "seed": 12.5}])
    # pandas stores an int column with a missing value as float64: such seeds arrive already rounded.
    df = pd.DataFrame({"prompt": ["a", "b"], "seed": [3839760927045813647, None]})
    with pytest.raises(ManifestError, match=r"row 0\): 3.839760927045814e\+18 is a float above 2\*\*53.*'Int64'"):
        normalize(pa.Table.from_pandas(df, preserve_index=False), DEFAULTS)
    fixed = pd.DataFrame({"prompt": ["a", "b"], "seed": pd.array([3839760927045813647, None], dtype="Int64")})
    assert normalize(pa.Table.from_pandas(fixed, preserve_index=False), DEFAULTS).column("seed")[0].as_py() == \
        3839760927045813647


def test_label_columns_pass_through():
    table = _normalize([{"prompt": "a", "animal": "cat", "score": 0.5}])
    assert table.column("animal").to_pylist() == ["cat"]
    assert table.column("score").to_pylist() == [0.5]


def test_the_manifest_columns_are_what_normalize_writes_and_labels_may_not_take_result_names():
    table = _normalize([{"prompt": "a", "animal": "cat"}])
    assert table.column_names == [*(c for c in MANIFEST_COLUMNS if c not in GUIDANCE_COLUMNS), "animal"]
    given = _normalize([{"prompt": "a", "animal": "cat", "true_cfg_scale": None, "max_sequence_length": None}])
    assert given.column_names == [*MANIFEST_COLUMNS, "animal"]
    assert set(RESULT_COLUMNS) == set(RESULT_SCHEMA.names) - set(MANIFEST_COLUMNS)
    assert "image" in RESULT_COLUMNS and "seed" not in RESULT_COLUMNS
    for name in ("status", "model_hash"):
        with pytest.raises(ManifestError, match=f"column '{name}'.*rename this label column"):
            _normalize([{"prompt": "a", name: "x"}])


def test_pandas_nan_in_integer_columns_means_default():
    df = pd.DataFrame({"prompt": ["a", "b"], "steps": [12, None]})
    table = normalize(pa.Table.from_pandas(df, preserve_index=False), DEFAULTS)
    assert table.column("steps").to_pylist() == [12, 5]


@pytest.mark.parametrize("rows, column, row_hint, fix_hint", [
    ([{"text": "a"}], "prompt", None, "add a string column 'prompt'"),
    ([{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}], "id", "row id 'a' (row 1)", "unique"),
    ([{"id": "a/b", "prompt": "x"}], "id", "row id 'a/b'", "rename it"),
    ([{"id": "..", "prompt": "x"}], "id", "row id '..'", "rename it"),
    ([{"id": "ok", "prompt": "x", "width": 500}], "width", "row id 'ok'", "use 496 or 504"),
    ([{"id": "ok", "prompt": "x", "steps": 0}], "steps", "row id 'ok'", "use 1 to 1000 steps"),
    ([{"id": "ok", "prompt": "x", "steps": -3}], "steps", "row id 'ok'", "use 1 to 1000 steps"),
    ([{"id": "ok", "prompt": None}], "prompt", "row id 'ok'", "use ''"),
    ([{"id": "ok", "prompt": "x", "steps": "ten"}], "steps", None, "expected int"),
    ([{"id": "ok", "prompt": "x", "scheduler": "magic"}], "scheduler", "row id 'ok'", "euler_a"),
    ([{"id": "ok", "prompt": "x", "seed": -1}], "seed", "row id 'ok'", "2**63"),
    ([{"id": "ok", "prompt": "x <lora:foo:0.8>"}], "prompt", "row id 'ok'", "pass --lora-dir"),
    ([{"id": "ok", "prompt": "x", "status": "draft"}], "status", None, "rename this label column"),
    ([{"id": "ok", "prompt": "x", "controlnets": [{"model": "s3://b/cn", "scale": 1.0,
                                                   "image": "https://h/i.png?X-Amz-Signature=ab"}]}],
     "controlnets", "row id 'ok'", "use an s3:// URI"),
    ([{"id": "ok", "prompt": "x", "controlnet": "s3://b/cn", "control_image": "https://u:p@h/i.png"}],
     "controlnets", "row id 'ok'", "use an s3:// URI"),
    ([{"id": "ok", "prompt": "x", "vae": "https://h/vae.safetensors?token=abc"}], "vae", "row id 'ok'",
     "password, signature or token"),
])
def test_bad_rows_are_refused_with_column_row_and_fix(rows, column, row_hint, fix_hint):
    with pytest.raises(ManifestError) as info:
        _normalize(rows)
    message = str(info.value)
    assert f"column '{column}'" in message
    if row_hint:
        assert row_hint in message
    assert fix_hint in message


def test_many_problems_are_summarized_not_flooded():
    rows = [{"id": f"r{i}", "prompt": "x", "width": 100} for i in range(30)]
    with pytest.raises(ManifestError) as info:
        _normalize(rows)
    assert "30 problem(s)" in str(info.value) and "and 20 more" in str(info.value)


def test_read_refuses_missing_and_non_parquet_files(tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(str(tmp_path / "nope.parquet"))
    bad = tmp_path / "bad.parquet"
    bad.write_text("id,prompt\n1,a\n")
    with pytest.raises(ManifestError, match="not a Parquet file"):
        read_manifest(str(bad))


def test_read_round_trips_a_written_manifest(tmp_path):
    path = write_manifest(tmp_path / "m.parquet", [{"prompt": "a"}, {"prompt": "b"}])
    assert read_manifest(str(path)).num_rows == 2


def _table(rows):
    """Every row with every key, so no column is lost to from_pylist reading the first row's keys only."""
    keys = list(dict.fromkeys(key for row in rows for key in row))
    return pa.Table.from_pylist([{key: row.get(key) for key in keys} for row in rows])


MIXED = [
    {"id": "r0", "prompt": "a", "vae": ""},
    {"id": "r1", "prompt": "b", "steps": 0},
    {"id": "r2", "prompt": None},
    {"id": "r3", "prompt": "c", "steps": 12.5},
    {"id": "r4", "prompt": "d", "width": 500},
    {"id": "r5", "prompt": "e", "width": 9000, "seed": -1},
    {"id": "r6", "prompt": "f <lora:nope:0.5>", "loras": [{"path": "/no/such.safetensors", "weight": 1.0}]},
    {"id": "r7", "prompt": "fine  spacing", "guidance_scale": -1.0, "scheduler": "magic"},
    {"id": "r8", "prompt": "g", "model": "https://u:p@h/m", "controlnet": "s3://b/cn",
     "control_image": "https://h/i.png?sig=1"},
    {"id": "r9", "prompt": "all good"},
]
SECRET = ("is a URL with a password, signature or token, which would be recorded in the output and in every image; "
          "use an s3:// URI (credentials from the environment) or a URL that needs none")
KNOWN = ", ".join(f"{s.a1111} ({s.name})" for s in SAMPLERS.values())
MIXED_PROBLEMS = [
    "column 'prompt', row id 'r2' (row 2): is null; use '' for an unconditional image",
    "column 'seed', row id 'r5' (row 5): -1 is out of range; use an integer in [0, 2**63) or null to derive one",
    "column 'steps', row id 'r1' (row 1): 0 is out of range; use 1 to 1000 steps ([defaults] max_steps or --max-steps raises the limit)",
    "column 'steps', row id 'r3' (row 3): 12.5 is not a whole number; use 1 to 1000 steps ([defaults] max_steps or --max-steps raises the limit)",
    "column 'guidance_scale', row id 'r7' (row 7): -1.0 is negative; use a value >= 0 (e.g. 7.5)",
    "column 'width', row id 'r5' (row 5): 9000 is out of range; use a multiple of 8 between 8 and 8192",
    "column 'width', row id 'r4' (row 4): 500 is not a multiple of 8; use 496 or 504",
    f"column 'scheduler', row id 'r7' (row 7): 'magic' is not a sampler sdbatch knows; use one of: {KNOWN} "
    "(a `schedule` column or the name's suffix gives the schedule type)",
    "column 'vae', row id 'r0' (row 0): is empty; name a vae or leave it null for the job's",
    "column 'loras', row id 'r6' (row 6): LoRA file or folder /no/such.safetensors does not exist; fix the path",
    "column 'prompt', row id 'r6' (row 6): LoRA 'nope' is a bare name; pass --lora-dir DIR (looked up as "
    "DIR/nope.safetensors) or give a path",
    f"column 'model', row id 'r8' (row 8): {SECRET}",
    f"column 'controlnets', row id 'r8' (row 8): {SECRET}",
]


def _problems(info) -> list[str]:
    return [line[len("  - "):] for line in str(info.value).splitlines()[1:] if line.startswith("  - ")]


def test_good_and_bad_rows_mixed_give_every_problem_in_column_then_row_order(monkeypatch):
    """Columns in the order normalize checks them, rows ascending within a column (sizes: range, then
    multiples of 8), a row's LoRA list entries before its tags: what the row-by-row code reported."""
    monkeypatch.setattr("sdbatch.manifest.problems.MAX_LISTED_PROBLEMS", 50)
    with pytest.raises(ManifestError) as info:
        normalize(_table(MIXED), RowDefaults(model="m"))
    assert str(info.value).startswith("manifest has 13 problem(s) in 10 rows:\n")
    assert _problems(info) == MIXED_PROBLEMS


def test_the_listing_is_capped_but_the_count_is_exact():
    with pytest.raises(ManifestError) as info:
        normalize(_table(MIXED), RowDefaults(model="m"))
    assert _problems(info) == MIXED_PROBLEMS[:MAX_LISTED_PROBLEMS]
    assert str(info.value).endswith(f"... and {13 - MAX_LISTED_PROBLEMS} more problem(s)")
    many = pa.table({"prompt": ["x"] * 50_000, "width": [500] * 25_000 + [64] * 24_999 + [7]})
    with pytest.raises(ManifestError) as info:
        normalize(many, DEFAULTS)
    assert "manifest has 25001 problem(s) in 50000 rows" in str(info.value)
    assert "row id '049999' (row 49999): 7 is out of range" in str(info.value)  # range first, then multiples of 8
    assert "and 24991 more problem(s)" in str(info.value)


def test_id_problems_name_the_first_valid_occurrence_of_a_duplicate():
    table = pa.table({"id": ["b", "a/x", "a", "b", None, "a", "abc\n", "a..b", "a.b"], "prompt": ["p"] * 9})
    with pytest.raises(ManifestError) as info:
        normalize(table, DEFAULTS, first_row=10)
    pattern = ("must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$ without '..' (no '/', spaces, line breaks); "
               "rename it")
    assert _problems(info) == [
        f"column 'id', row id 'a/x' (row 11): {pattern}",
        "column 'id', row id 'b' (row 13): duplicates row 10; ids must be unique",
        "column 'id', row 14: is null; give every row an id or drop the column",
        "column 'id', row id 'a' (row 15): duplicates row 12; ids must be unique",
        f"column 'id', row id 'abc\\n' (row 16): {pattern}",  # the whole id must match: no trailing newline
        f"column 'id', row id 'a..b' (row 17): {pattern}",
    ]
    assert duplicate_ids(pa.array(["c", "a", None, "c", None])).to_pylist() == ["c"]
    assert duplicate_ids(pa.chunked_array([["a", "b"], ["c", "d"]])).to_pylist() == []


def test_integer_ids_become_their_decimal_text():
    table = pa.table({"id": pa.array([3, 10, -0], pa.int64()), "prompt": ["a", "b", "c"]})
    assert normalize(table, DEFAULTS).column("id").to_pylist() == ["3", "10", "0"]


def test_a_chunk_normalized_alone_names_global_rows_and_gets_the_global_ids():
    table = pa.table({"prompt": ["p"] * 10, "steps": [5] * 9 + [0]})
    full = normalize(table.slice(0, 9), DEFAULTS, total_rows=2_000_000)
    assert full.column("id")[0].as_py() == "0000000"  # seven digits: 1999999 needs them
    chunk = normalize(table.slice(5, 4), DEFAULTS, first_row=5, total_rows=2_000_000)
    assert chunk.equals(full.slice(5, 4))
    assert chunk.column("seed")[0].as_py() == derive_seed(DEFAULTS.seed, "0000005")
    with pytest.raises(ManifestError, match=r"row id '1000009' \(row 1000009\): 0 is out of range"):
        normalize(table.slice(9), DEFAULTS, first_row=1_000_009, total_rows=2_000_000)
    parts = [normalize(table.slice(start, 3), DEFAULTS, first_row=start, total_rows=9) for start in (0, 3, 6)]
    assert pa.concat_tables(parts).equals(normalize(table.slice(0, 9), DEFAULTS))


def test_derived_seeds_keep_their_exact_values():
    """Reproducibility: a rerun or a resumed run must derive the very same seeds."""
    assert derive_seed(7, "000000") == 2625611981871856392
    assert derive_seed(0, "a") == 7606779636460171844
    table = pa.table({"id": ["a", "r0000001"], "prompt": ["x", "y"]})
    assert normalize(table, RowDefaults(seed=0)).column("seed")[0].as_py() == 7606779636460171844
    assert normalize(table, RowDefaults(seed=123)).column("seed")[1].as_py() == 2017904775953190890


def test_unsigned_seeds_and_sizes_beyond_int64_are_refused_not_crashed():
    table = pa.table({"prompt": ["a", "b"], "steps": pa.array([2**64 - 1, 4], pa.uint64())})
    with pytest.raises(ManifestError, match=r"18446744073709551615 is out of range; use 1 to 1000 steps"):
        normalize(table, DEFAULTS)


def _reference(rows: list[dict], defaults: RowDefaults, lora_dir) -> list[dict]:
    """The row-by-row normalization, for manifests without problems."""
    resolved = {}

    def lora(name):
        if name not in resolved:
            resolved[name] = name if "/" in name else str((lora_dir / f"{name}.safetensors").resolve())
        return resolved[name]

    out = []
    for row in rows:
        tags = [(m.group(1).strip(), m.group(2)) for m in LORA_TAG.finditer(row["prompt"])]
        loras = [{"path": lora(e["path"]), "weight": 1.0 if e["weight"] is None else e["weight"]}
                 for e in row["loras"] or []]
        loras += [{"path": lora(name), "weight": float(w) if w else 1.0} for name, w in tags]
        guidance = row["guidance_scale"]
        out.append({
            "id": row["id"], "prompt": " ".join(LORA_TAG.sub(" ", row["prompt"]).split()),
            "negative_prompt": defaults.negative_prompt,
            "seed": derive_seed(defaults.seed, row["id"]) if row["seed"] is None else row["seed"],
            "steps": defaults.steps if row["steps"] is None else row["steps"],
            "guidance_scale": defaults.guidance_scale if guidance is None or guidance != guidance else guidance,
            "width": defaults.width if row["width"] is None else row["width"], "height": defaults.height,
            "scheduler": row["scheduler"] or defaults.scheduler, "model": row["model"] or defaults.model,
            "vae": defaults.vae, "loras": loras, "controlnets": [], "prompt_syntax": defaults.prompt_syntax,
            "clip_skip": defaults.clip_skip, "pipeline": "txt2img", "init_image": None, "mask_image": None,
            "strength": None, "hires_scale": None, "hires_steps": None, "hires_strength": None, "hires_upscaler": None,
            "animal": row["animal"]})
    return out


def test_a_large_manifest_normalizes_as_row_by_row_code_would(tmp_path):
    (tmp_path / "style.safetensors").write_bytes(b"x")
    rng = random.Random(0)
    n = 200_000
    order = list(range(n))
    rng.shuffle(order)  # unordered ids: the uniqueness check cannot take its shortcut
    prompts = ["a cat", " a  cat ", "\tleading tab", "no\xa0break", "x <lora:style:0.5> y", "<lora:style>", "",
               "plain words here", "two\u3000words", "a <lora:someone/lora:0.3>"]
    rows = [{"id": f"r{p:06d}", "prompt": rng.choice(prompts),
             "seed": rng.choice([None, rng.randrange(2**63)]), "steps": rng.choice([None, 1, 20, 50]),
             "guidance_scale": rng.choice([None, float("nan"), 0.0, 7.5]), "width": rng.choice([None, 8, 512, 8192]),
             "scheduler": rng.choice([None, "euler", "ddim"]), "model": rng.choice([None, "m1", "m2"]),
             "loras": rng.choice([None, [], [{"path": "style", "weight": None}], [{"path": "o/l", "weight": 0.5}]]),
             "animal": rng.choice([None, "cat", "dog"])} for p in order]
    table = pa.Table.from_pylist(rows)
    table = pa.concat_tables([table.slice(0, 70_000), table.slice(70_000, 1), table.slice(70_001)])  # chunked
    defaults = RowDefaults(model="m0", steps=9, width=64, seed=3, lora_dir=str(tmp_path))
    assert normalize(table, defaults).to_pylist() == _reference(rows, defaults, tmp_path)


def test_samplers_and_schedule_types_as_sdbatch_or_a1111_write_them():
    table = pa.table({"prompt": ["a"] * 6,
                      "scheduler": ["DPM++ 2M", "DPM++ 2M Karras", "dpmpp_2m_karras", "Euler a", None, "euler"],
                      "schedule": ["Karras", None, None, "Automatic", None, "sgm_uniform"]})
    out = normalize(table, RowDefaults(model="tiny:sd15", scheduler="DDIM"))
    assert out.column("scheduler").to_pylist() == ["dpmpp_2m_karras", "dpmpp_2m_karras", "dpmpp_2m_karras",
                                                   "euler_a", "ddim", "euler_sgm_uniform"]
    assert "schedule" not in out.column_names  # folded into the scheduler's name, not a label

    bad = pa.table({"prompt": ["a", "b"], "scheduler": ["Euler a", "DPM++ 2S a"], "schedule": ["Karras", None]})
    with pytest.raises(ManifestError) as info:
        normalize(bad, RowDefaults(model="tiny:sd15"))
    message = " ".join(str(info.value).split())
    assert "column 'scheduler', row id" in message and "'Euler a' takes no 'Karras' schedule" in message
    assert "'DPM++ 2S a' is not a sampler sdbatch knows (diffusers has no ancestral single-step" in message


def test_prompts_are_checked_against_their_syntax_and_clip_skip_and_syntax_columns_are_read():
    rows = [{"id": "ok", "prompt": "a (fox:1.2)", "negative_prompt": "[blurry]"},
            {"id": "open", "prompt": "a (fox", "negative_prompt": None},
            {"id": "text", "prompt": "a (fox", "negative_prompt": "x)", "prompt_syntax": "plain", "clip_skip": 2},
            {"id": "neg", "prompt": "a", "negative_prompt": "lowres)"}]
    notes = Notes()
    table = normalize(_table(rows), DEFAULTS, notes=notes)  # A1111 reads unbalanced brackets: so does sdbatch
    assert table.column("prompt_syntax").to_pylist() == ["a1111", "a1111", "plain", "a1111"]
    assert table.column("clip_skip").to_pylist() == [1, 1, 2, 1]
    (line,) = notes.lines()
    assert line.startswith("2 prompt(s) have unbalanced brackets") and 'prompt_syntax = "a1111-strict"' in line
    assert "row id 'open' (row 1), prompt: '(' at character 3" in line and "row id 'neg' (row 3), negative_prompt" in line
    with pytest.raises(ManifestError) as info:
        normalize(_table(rows), RowDefaults(model="m", prompt_syntax="a1111-strict"))
    problems = _problems(info)
    assert len(problems) == 2
    assert "column 'prompt'" in problems[0] and "row id 'open'" in problems[0] and "never closed" in problems[0]
    assert "column 'negative_prompt'" in problems[1] and "row id 'neg'" in problems[1]
    assert 'prompt_syntax = "a1111"' in problems[1]
    with pytest.raises(ManifestError, match="column 'clip_skip'.*use 1"):
        _normalize([{"prompt": "a", "clip_skip": 0}])
    with pytest.raises(ManifestError, match="column 'prompt_syntax'.*use one of a1111, a1111-strict, plain"):
        _normalize([{"prompt": "a", "prompt_syntax": "compel"}])
    assert normalize(pa.Table.from_pylist([rows[1]]), RowDefaults(prompt_syntax="plain", clip_skip=3)).column(
        "clip_skip").to_pylist() == [3]


def test_rows_made_with_embeddings_need_an_embedding_folder(tmp_path):
    rows = [{"id": "a", "prompt": "x", "ti_hashes": "EasyNegative: c74b4e810b03"}, {"id": "b", "prompt": "y"}]
    with pytest.raises(ManifestError, match=r"column 'ti_hashes', row id 'a'.*pass --embedding-dir"):
        normalize(_table(rows), DEFAULTS)
    table = normalize(_table(rows), RowDefaults(embedding_dir=str(tmp_path)))
    assert table.column("ti_hashes").to_pylist() == ["EasyNegative: c74b4e810b03", None]  # kept for the renderer
