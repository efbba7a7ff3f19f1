"""Any metadata at all, under the keys each generator reads: a row or nothing, never an exception."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdbatch.metadata import GENERATORS, Reading, UnreadableImage, read_image
from sdbatch.metadata.image import ImageTexts
from tests.support.generator_images import comfyui_graph, png

KEYS = ("parameters", "prompt", "Comment", "Description", "Software", "invokeai_metadata", "sd-metadata", "Dream",
        "fooocus_scheme")
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                      max_leaves=12)
# Documents shaped like each generator's, their fields replaced by anything.
shaped = st.one_of(
    values.map(json.dumps),
    st.dictionaries(st.sampled_from(["3", "4", "5", "6", "7", "10"]),
                    st.fixed_dictionaries({"class_type": st.sampled_from(
                        ["KSampler", "KSamplerAdvanced", "CLIPTextEncode", "LoraLoader", "CheckpointLoaderSimple",
                         "EmptyLatentImage", "Other"]), "inputs": st.dictionaries(
                        st.sampled_from(["seed", "steps", "cfg", "model", "positive", "negative", "latent_image",
                                         "text", "lora_name", "strength_model", "width", "batch_size", "denoise",
                                         "sampler_name", "scheduler"]),
                        st.one_of(values, st.tuples(st.sampled_from(["3", "4", "6", "10", "99"]), st.integers(0, 2))
                                  .map(list)), max_size=8)}), max_size=6).map(json.dumps),
    st.text(max_size=80),
)


@settings(max_examples=300, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(st.dictionaries(st.sampled_from(KEYS), shaped, max_size=4))
def test_any_metadata_gives_a_row_or_nothing(texts):
    image = ImageTexts(texts, 64, 48, "PNG")
    for generator in GENERATORS:
        if generator.claims(image):
            reading = generator.read(image)
            assert isinstance(reading, Reading) and isinstance(reading.row.get("prompt", ""), str)
            assert all(isinstance(field, str) for field in reading.unrendered)


def test_a_graph_that_loops_back_on_itself_ends():
    graph = comfyui_graph()
    graph["4"] = {"class_type": "LoraLoader", "inputs": {"lora_name": "x", "strength_model": 1, "model": ["10", 0]}}
    reading = read_image(png({"prompt": json.dumps(graph)}))
    assert "model from LoraLoader" in reading.unrendered and "model" not in reading.row


@pytest.mark.parametrize("data, kind", [(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, "damaged"),
                                        (b"RIFF\x00\x00\x00\x00WEBP", "not an image"),
                                        (b"\xff\xd8\xff\xe0" + b"\x00" * 10, "not an image")])
def test_bytes_that_are_no_image_are_unreadable_not_a_crash(data, kind):
    with pytest.raises(UnreadableImage) as info:
        read_image(data)
    assert info.value.kind == kind


@pytest.mark.parametrize("graph", [
    {"3": {"class_type": "KSampler", "inputs": {"sampler_name": [None], "scheduler": 7}}},  # a link to nothing
    {"3": {"class_type": "KSampler", "widgets": {}}},  # no inputs at all
    {"1": 5, "2": [], "3": {"class_type": "KSampler", "inputs": ["not", "a", "mapping"]}},
])
def test_a_damaged_graph_reads_as_a_row_with_what_it_lacks_reported(graph):
    reading = read_image(png({"prompt": json.dumps(graph)}))
    assert reading.generator == "ComfyUI" and reading.row["scheduler"] is None and reading.unrendered
