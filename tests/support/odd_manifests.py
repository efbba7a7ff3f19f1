"""Manifests a careless or hostile user writes, one per kind of trouble, as files: each must get a clear refusal
naming its column (and row), or be accepted as the docs say."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def _text_bytes(*values: bytes) -> pa.Array:
    """A string column whose bytes are not checked as UTF-8 on the way in, as other writers leave them."""
    return pa.array(list(values), pa.binary()).view(pa.string())


def _lora(weight) -> pa.Array:
    return pa.array([[{"path": "s3://b/style.safetensors", "weight": weight}]])


def _net(scale) -> pa.Array:
    return pa.array([[{"model": "s3://b/cn", "image": "s3://b/edge.png", "scale": scale}]])


# name -> (columns, what the refusal must say); the row is always row 0 unless the needles say otherwise.
REFUSED = {
    "long_path_component": ({"prompt": ["a"], "init_image": ["/tmp/" + "x" * 300 + ".png"]},
                            ["column 'init_image'", "(row 0)", "more than the 255 a file name can be"]),
    "long_lora_tag": ({"prompt": ["a <lora:" + "y" * 300 + ":0.5>"]},
                      ["column 'prompt'", "(row 0)", "more than the 255 a file name can be"]),
    "unknown_user_lora": ({"prompt": ["a <lora:~nosuchuser/x.safetensors:1>"]},
                          ["column 'prompt'", "'~nosuchuser', a user this machine does not have"]),
    "loras_not_a_list": ({"prompt": ["a"], "loras": [5]}, ["column 'loras'", "has type int64", "a list of"]),
    "loras_a_string": ({"prompt": ["a"], "loras": ["style.safetensors"]}, ["column 'loras'", "has type string"]),
    "controlnets_not_a_list": ({"prompt": ["a"], "controlnets": [1.5]}, ["column 'controlnets'", "has type double"]),
    "weight_a_word": ({"prompt": ["a"], "loras": _lora("heavy")}, ["column 'loras'", "not a number ('heavy')"]),
    "scale_a_word": ({"prompt": ["a"], "controlnets": _net("big")}, ["column 'controlnets'", "not a number ('big')"]),
    "not_utf8_with_bracket": ({"prompt": _text_bytes(b"ok", b"caf\xe9 (x)")},
                              ["column 'prompt'", "row 1", "is not UTF-8 text", "b'caf\\xe9 (x)'"]),
    "not_utf8": ({"prompt": _text_bytes(b"caf\xe9")}, ["column 'prompt'", "row 0", "is not UTF-8 text"]),
    "infinite_guidance": ({"prompt": ["a"], "guidance_scale": [math.inf]},
                          ["column 'guidance_scale'", "inf is not finite"]),
    "nan_lora_weight": ({"prompt": ["a"], "loras": _lora(math.nan)}, ["column 'loras'", "a weight of nan"]),
    "inf_lora_weight": ({"prompt": ["a"], "loras": _lora(math.inf)}, ["column 'loras'", "a weight of inf"]),
    "inf_controlnet_scale": ({"prompt": ["a"], "controlnets": _net(-math.inf)},
                             ["column 'controlnets'", "a scale of -inf"]),
    "nan_lora_tag": ({"prompt": ["a <lora:style:nan>"]}, ["column 'prompt'", "a weight of nan"]),
    "overflowing_lora_tag": ({"prompt": ["a <lora:style:1e400>"]},
                             ["column 'prompt'", "a weight of inf"]),
    "eight_thousand_parentheses": ({"prompt": ["(" * 8000 + "a" + ")" * 8000]},
                                   ["column 'prompt'", "multiply to infinity"]),
    "id_with_newline": ({"id": ["abc\n"], "prompt": ["a"]}, ["column 'id'", "'abc\\n'", "rename it"]),
    "id_with_dots": ({"id": ["a..b"], "prompt": ["a"]}, ["column 'id'", "'a..b'", "without '..'"]),
    "schedule_without_scheduler": ({"prompt": ["a"], "schedule": ["Karras"]},
                                   ["column 'schedule'", "no scheduler to apply it to"]),
    "control_image_without_controlnet": ({"prompt": ["a"], "control_image": ["s3://b/edge.png"]},
                                         ["column 'control_image'", "controlnet is not"]),
    "controlnet_scale_on_a_row_without_one": (
        {"prompt": ["a", "b"], "controlnet": ["s3://b/cn", None], "control_image": ["s3://b/e.png", None],
         "controlnet_scale": [0.5, 0.7]}, ["column 'controlnet_scale'", "(row 1)", "controlnet is not"]),
    "steps_past_the_limit": ({"prompt": ["a"], "steps": [100_000]}, ["column 'steps'", "use 1 to 1000 steps"]),
    "hires_past_the_limit": ({"prompt": ["a"], "width": [4096], "height": [4096], "hires_scale": [2.0]},
                             ["column 'width'", "the hires pass's 8192 x 8192", "max_pixels"]),
    "size_past_the_limit": ({"prompt": ["a"], "width": [8192], "height": [8192]},
                            ["column 'width'", "8192 x 8192 is more than"]),
    "megabyte_value": ({"prompt": ["a"], "scheduler": ["x" * 1_000_000]}, ["column 'scheduler'", "(1000000 characters)"]),
    "terminal_controls": ({"prompt": ["a"], "scheduler": ["\x1b[31mred\x1b[0m\x07"]},
                          ["column 'scheduler'", "\\x1b[31mred"]),
}


def write_refused(name: str, folder: Path) -> Path:
    path = folder / f"{name}.parquet"
    pq.write_table(pa.table(REFUSED[name][0]), path)
    return path


def write_repeated_column(folder: Path) -> Path:
    path = folder / "repeated.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array(["a"]), pa.array(["b"])], names=["prompt", "prompt"]), path)
    return path


def write_damaged_page(folder: Path) -> Path:
    """A file whose footer is whole and whose second row group's first data page is garbage."""
    path = folder / "damaged.parquet"
    table = pa.table({"prompt": [f"prompt number {i} " * 5 for i in range(2000)]})
    pq.write_table(table, path, compression="snappy", row_group_size=1000)
    data = bytearray(path.read_bytes())
    start = pq.ParquetFile(path).metadata.row_group(1).column(0).data_page_offset
    for at in range(start, start + 400):
        data[at] ^= 0x5A
    path.write_bytes(bytes(data))
    return path
