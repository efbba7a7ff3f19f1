"""`manifest from-images` over a real S3 server: every generator's images read on threads, bad files named."""

import pyarrow.parquet as pq

from sdbatch.manifest.from_images import write_manifest_from_images
from sdbatch.settings import S3Settings
from sdbatch.store import open_store
from tests.support.generator_images import comfyui_graph, comfyui_png, invokeai_png, novelai_png, png


def test_images_in_a_bucket_become_a_manifest_and_the_bad_ones_are_named(s3_env, new_bucket, tmp_path):
    s3 = S3Settings(endpoint_url=s3_env)
    store = open_store(f"s3://{new_bucket}/made", s3)
    a1111 = "a fox\nSteps: 3, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 64x64, Model: tiny"
    files = {"a.png": png({"parameters": a1111}), "c.png": comfyui_png(comfyui_graph()), "n.png": novelai_png(),
             "i.png": invokeai_png("3"), "empty.png": b"", "cut.png": png({"parameters": a1111})[:-20]}
    files.update({f"more/{n:03d}.png": png({"parameters": a1111.replace("Seed: 5", f"Seed: {n}")})
                  for n in range(40)})
    for key, data in files.items():
        store.put(key, data)
    out = tmp_path / "m.parquet"
    read = write_manifest_from_images(f"s3://{new_bucket}/made", str(out), s3)
    table = pq.read_table(out)
    assert read.rows == table.num_rows == 44
    assert dict(read.generators) == {"A1111": 41, "ComfyUI": 1, "NovelAI": 1, "InvokeAI": 1}
    assert dict(read.unreadable_count) == {"empty": 1, "truncated": 1}
    assert "(empty.png)" in read.skips() and "(cut.png)" in read.skips()
    assert table.column("source_image").to_pylist() == sorted(k for k in files if k not in ("empty.png", "cut.png"))
