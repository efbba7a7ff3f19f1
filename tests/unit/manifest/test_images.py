"""Image-conditioned manifest columns: the pipeline kind derived, strengths and the hires pass checked up front."""

import pyarrow as pa
import pytest
from PIL import Image

from sdbatch.errors import ManifestError
from sdbatch.manifest.normalize import normalize
from sdbatch.settings import RowDefaults

KEYS = ("prompt", "init_image", "mask_image", "strength", "hires_scale", "hires_steps", "hires_strength", "width",
        "height")


def _table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist([{k: row.get(k) for k in KEYS} for row in rows])


@pytest.fixture
def image(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "in.png")
    return str(tmp_path / "in.png")


def test_kinds_are_derived_and_defaults_apply_only_where_they_mean_something(image):
    rows = [{"prompt": "a"}, {"prompt": "b", "init_image": image}, {"prompt": "c", "init_image": image,
                                                                     "mask_image": image, "strength": 0.3},
            {"prompt": "d", "hires_scale": 2.0, "width": 64, "height": 48}]
    table = normalize(_table(rows), RowDefaults(strength=0.8, hires_upscaler="image")).to_pylist()
    assert [r["pipeline"] for r in table] == ["txt2img", "img2img", "inpaint", "txt2img"]
    assert [r["strength"] for r in table] == [None, 0.8, 0.3, None]
    assert [r["hires_upscaler"] for r in table] == [None, None, None, "image"]
    assert (table[3]["hires_strength"], table[3]["hires_steps"]) == (0.7, None)


def test_misuses_are_refused_with_column_row_and_fix(image, tmp_path):
    rows = [{"prompt": "mask only", "mask_image": image},
            {"prompt": "too strong", "init_image": image, "strength": 1.5},
            {"prompt": "strength alone", "strength": 0.5},
            {"prompt": "hires img2img", "init_image": image, "hires_scale": 2.0, "width": 64, "height": 64},
            {"prompt": "hires native", "hires_scale": 2.0},
            {"prompt": "hires odd", "hires_scale": 1.3, "width": 64, "height": 64},
            {"prompt": "missing", "init_image": str(tmp_path / "nope.png")},
            {"prompt": "steps alone", "hires_steps": 5}]
    with pytest.raises(ManifestError) as caught:
        normalize(_table(rows), RowDefaults())
    text = " ".join(str(caught.value).split())
    for expected in ["column 'mask_image', row id '000000' (row 0): is set but init_image is not",
                     "column 'strength', row id '000001' (row 1): 1.5 is outside (0, 1]",
                     "column 'strength', row id '000002' (row 2): is set but init_image is not",
                     "column 'hires_scale', row id '000003' (row 3): is set on a row with an init_image",
                     "column 'width', row id '000004' (row 4): is null (the model's native size) on a hires row",
                     "column 'width', row id '000005' (row 5): 64 x hires_scale 1.3 = 83.2 is not a multiple of 8",
                     "column 'init_image', row id '000006' (row 6): init image", "does not exist",
                     "column 'hires_steps', row id '000007' (row 7): is set but hires_scale is not"]:
        assert expected in text, expected


def test_an_upscaler_without_a_hires_pass_is_refused_rather_than_dropped():
    rows = [{"prompt": "a", "hires_upscaler": "image"},
            {"prompt": "b", "hires_scale": 2.0, "width": 64, "height": 64, "hires_upscaler": "image"}]
    with pytest.raises(ManifestError) as caught:
        normalize(pa.Table.from_pylist([{k: row.get(k) for k in (*KEYS, "hires_upscaler")} for row in rows]),
                  RowDefaults())
    text = " ".join(str(caught.value).split())
    assert "column 'hires_upscaler', row id '000000' (row 0): is set but hires_scale is not" in text
    assert "row 1" not in text
