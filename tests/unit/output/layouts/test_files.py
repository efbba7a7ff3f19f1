"""The files layout without torch: images written once with their parameters, earlier images adopted, races."""

import io
import json

import pyarrow as pa
from PIL import Image

from sdbatch.a1111.parameters import parse_parameters
from sdbatch.output.commits import marker_key
from sdbatch.output.layouts import layout_named
from sdbatch.output.layouts.files import image_key
from sdbatch.store.local import LocalStore
from tests.support.generator_images import embedded_parameters
from tests.support.shard_outputs import attempt, rows


def test_each_ok_row_is_one_image_with_its_parameters_and_a_failed_row_none(tmp_path):
    store = LocalStore(str(tmp_path))
    outcome = attempt(store, "files", "000000", "a1", rows(3), failing={"r1"})
    assert outcome.committed and (outcome.rendered, outcome.adopted) == (3, 0)
    assert store.list("images/") == [image_key("000000", "r0", "png"), image_key("000000", "r2", "png")]
    image = store.get(image_key("000000", "r2", "png"))
    assert Image.open(io.BytesIO(image)).getpixel((0, 0)) == (12, 0, 0)
    assert parse_parameters(embedded_parameters(image))["Seed"] == "12"
    by_id = {r["id"]: r for r in outcome.results}
    assert by_id["r1"]["status"] == "failed" and by_id["r1"]["image"] is None
    assert json.loads(store.get(marker_key("000000")))["attempt"] == "a1"


def test_an_attempt_after_one_that_died_adopts_its_images_and_renders_only_the_rest(tmp_path):
    store = LocalStore(str(tmp_path))
    attempt(store, "files", "000000", "a1", rows(3))
    store.delete(marker_key("000000"))  # died before its marker
    store.delete(image_key("000000", "r1", "png"))  # and before one of its images
    before = store.get(image_key("000000", "r0", "png"))
    again = attempt(store, "files", "000000", "a2", rows(3))
    assert again.committed and (again.rendered, again.adopted) == (1, 2)
    assert store.get(image_key("000000", "r0", "png")) == before
    assert {r["id"]: r["adopted"] for r in again.results} == {"r0": True, "r1": False, "r2": True}


def test_an_image_a_racing_attempt_wrote_first_is_recorded_as_adopted(tmp_path):
    store = LocalStore(str(tmp_path))
    racer = rows(2, seed=99)  # another attempt's pixels for the same keys

    def race():
        attempt(store, "files", "000000", "a1", racer)

    late = attempt(store, "files", "000000", "a2", rows(2), race=race)
    assert not late.committed and late.marker["attempt"] == "a1" and late.adopted == 2
    pixel = Image.open(io.BytesIO(store.get(image_key("000000", "r0", "png")))).getpixel((0, 0))
    assert pixel == (99, 0, 0)  # the first write stands: create-once


def test_readers_find_loose_images_and_link_them_as_they_are(tmp_path):
    store = LocalStore(str(tmp_path))
    attempt(store, "files", "000000", "a1", rows(1))
    layout = layout_named("files")
    key = image_key("000000", "r0", "png")
    (found,) = layout.images_in(store, key)
    assert (found.ref, found.name, found.data) == (key, "r0.png", store.get(key))
    assert list(layout.images_in(store, marker_key("000000"))) == []
    assert layout.browsable(store)(key) == key
    layout.check_ids(pa.array(["a.b", "c"]), 0)  # a dotted id is a fine file name
