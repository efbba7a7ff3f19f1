"""`manifest from-images` without Ray: rows written a batch at a time, nothing left behind on failure."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from PIL import Image

from sdbatch.a1111.parameters import save_options
from sdbatch.errors import ManifestError
from sdbatch.manifest import from_images as reproduce
from sdbatch.manifest.from_images import manifest_from_images, write_manifest_from_images

PARAMETERS = "a red fox {n}\nSteps: 3, Sampler: Euler, CFG scale: 7, Seed: {n}, Size: 64x64, Model: tiny"


def _image(path, n: int | None) -> None:
    options = save_options("png", PARAMETERS.format(n=n)) if n is not None else {}
    Image.new("RGB", (8, 8)).save(path, "PNG", **options)


def test_rows_are_written_in_batches_and_read_as_they_would_be_in_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(reproduce, "BATCH_ROWS", 4)
    (tmp_path / "images").mkdir()
    for n in range(11):
        _image(tmp_path / "images" / f"img{n:02d}.png", n)
    _image(tmp_path / "images" / "plain.png", None)  # no parameters: skipped, counted
    read = write_manifest_from_images(str(tmp_path / "images"), str(tmp_path / "m.parquet"))
    rows, skipped = read.rows, read.skipped
    written = pq.ParquetFile(tmp_path / "m.parquet")
    assert (rows, skipped) == (11, 1) and written.metadata.num_row_groups == 3
    table, _ = manifest_from_images(str(tmp_path / "images"))
    assert written.read().equals(table)
    assert table.column("seed").to_pylist() == list(range(11))


def test_a_folder_without_parameters_leaves_no_manifest(tmp_path):
    (tmp_path / "images").mkdir()
    _image(tmp_path / "images" / "plain.png", None)
    with pytest.raises(ManifestError, match="none of the 1 images"):
        write_manifest_from_images(str(tmp_path / "images"), str(tmp_path / "m.parquet"))
    assert list(tmp_path.iterdir()) == [tmp_path / "images"]


A1111_1_10 = ("(masterpiece:1.2), a castle on a hill, [foggy] <lora:castleStyle:0.7>\n"
              "Negative prompt: EasyNegative, lowres\n"
              "Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 12345, Size: 512x768, "
              "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, Denoising strength: 0.4, "
              'Hires upscale: 2, Lora hashes: "castleStyle: abc123def456", TI hashes: "EasyNegative: c74b4e810b03", '
              "Version: v1.10.1")


def test_from_images_takes_what_it_renders_and_reports_each_field_it_does_not(tmp_path):
    from tests.support.util import run_cli

    (tmp_path / "images").mkdir()
    texts = [A1111_1_10.replace("Hires upscale: 2, ", ""), A1111_1_10,  # img2img (no init image to read), hires
             A1111_1_10.replace("Hires upscale: 2, ", "Hires upscale: 2, Hires upscaler: R-ESRGAN 4x+, ")]
    for n, text in enumerate(texts):
        Image.new("RGB", (8, 8)).save(tmp_path / "images" / f"a{n}.png", "PNG", **save_options("png", text))
    out = tmp_path / "m.parquet"
    read = write_manifest_from_images(str(tmp_path / "images"), str(out))
    row = pq.read_table(out).to_pylist()[0]
    assert row["scheduler"] == "dpmpp_2m_karras" and (row["width"], row["height"], row["steps"]) == (512, 768, 25)
    assert row["prompt"].endswith("<lora:castleStyle:0.7>") and row["negative_prompt"] == "EasyNegative, lowres"
    assert (row["clip_skip"], row["prompt_syntax"]) == (2, "a1111")
    assert row["ti_hashes"] == "EasyNegative: c74b4e810b03"  # the embedding itself renders from the word
    assert dict(read.dropped) == {"Denoising strength": 1, "Hires upscaler": 1}
    hires = pq.read_table(out).to_pylist()[1]
    assert (hires["hires_scale"], hires["hires_strength"], hires["hires_upscaler"]) == (2.0, 0.4, "latent")
    assert row["hires_scale"] is None and row["strength"] is None
    out.unlink()
    with pytest.raises(ManifestError, match="Hires upscaler in 1 image"):
        write_manifest_from_images(str(tmp_path / "images"), str(out), strict=True)
    assert not out.exists()
    refused = run_cli("manifest", "from-images", str(tmp_path / "images"), "-o", str(out), "--strict")
    assert refused.returncode == 2 and not out.exists()
    said = run_cli("manifest", "from-images", str(tmp_path / "images"), "-o", str(out))
    assert said.returncode == 0 and out.exists()
    assert "made with textual inversion embeddings: EasyNegative (3); submit with --embedding-dir" in " ".join(
        said.stdout.split())
    assert "not rendered, so left out of the manifest: Denoising strength in 1 image(s); Hires upscaler in 1" in " ".join(
        said.stdout.split())


def test_a_folder_with_files_that_are_not_whole_images_still_yields_its_manifest(tmp_path):
    """An empty file, a truncated PNG, a text file named .png and a broken tar are skipped by name; the rest goes
    on, every generator's images among it."""
    from tests.support.generator_images import comfyui_graph, comfyui_png, fooocus_png, novelai_png
    from tests.support.util import run_cli

    folder = tmp_path / "images"
    folder.mkdir()
    _image(folder / "a1111.png", 7)
    (folder / "comfy.png").write_bytes(comfyui_png(comfyui_graph()))
    (folder / "nai.png").write_bytes(novelai_png())
    (folder / "fooocus.png").write_bytes(fooocus_png())
    (folder / "empty.png").write_bytes(b"")
    (folder / "cut.png").write_bytes((folder / "a1111.png").read_bytes()[:-40])
    (folder / "notes.png").write_text("not an image at all")
    (folder / "broken.tar").write_bytes(b"\x00" * 100)
    out = tmp_path / "m.parquet"
    read = write_manifest_from_images(str(folder), str(out))
    table = pq.read_table(out)
    assert sorted(table.column("generator").to_pylist()) == ["A1111", "ComfyUI", "Fooocus", "NovelAI"]
    assert sorted(table.column("id").to_pylist()) == ["a1111", "comfy", "fooocus", "nai"]
    assert dict(read.unreadable_count) == {"empty": 1, "truncated": 1, "not an image": 1, "not readable": 1}
    assert "1 empty (empty.png)" in read.skips() and "1 truncated (cut.png)" in read.skips()
    assert "1 not readable (broken.tar)" in read.skips()
    said = run_cli("manifest", "from-images", str(folder), "-o", str(out))
    text = " ".join(said.stdout.split())
    assert said.returncode == 0 and "Traceback" not in said.stderr, said.stderr
    assert "4 rows (" in text and "skipped, not whole images: 1 empty (empty.png)" in text
    assert "Model (NovelAI's own: NovelAI Diffusion V3 7BCCAA2C) in 1 image(s)" in text


def test_a1111s_vae_renders_from_the_vae_folder_or_is_reported(tmp_path):
    from sdbatch.manifest.from_images import ReadOptions

    folder, vaes = tmp_path / "images", tmp_path / "vaes"
    folder.mkdir()
    vaes.mkdir()
    text = PARAMETERS.format(n=1) + ", VAE: vae-ft-mse.safetensors"
    Image.new("RGB", (8, 8)).save(folder / "a.png", "PNG", **save_options("png", text))
    table, _ = manifest_from_images(str(folder))
    assert table.column("vae").to_pylist() == [None]
    read = write_manifest_from_images(str(folder), str(tmp_path / "m.parquet"))
    assert dict(read.dropped) == {"VAE": 1}
    (vaes / "vae-ft-mse.safetensors").write_bytes(b"x")
    read = write_manifest_from_images(str(folder), str(tmp_path / "m.parquet"), options=ReadOptions(str(vaes)))
    assert dict(read.dropped) == {}
    assert pq.read_table(tmp_path / "m.parquet").column("vae").to_pylist() == [
        str((vaes / "vae-ft-mse.safetensors").resolve())]


def test_strict_refuses_a_sampler_that_would_fall_back_to_the_models_own(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    text = PARAMETERS.format(n=1).replace("Sampler: Euler", "Sampler: DPM++ SDE Karras")
    Image.new("RGB", (8, 8)).save(folder / "a.png", "PNG", **save_options("png", text))
    with pytest.raises(ManifestError, match=r"Sampler \(DPM\+\+ SDE Karras\) in 1 image"):
        write_manifest_from_images(str(folder), str(tmp_path / "m.parquet"), strict=True)
    assert not (tmp_path / "m.parquet").exists()
