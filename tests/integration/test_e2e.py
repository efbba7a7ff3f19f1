"""End to end on a real local Ray: submit rows of every kind into SeaweedFS, rerun as resume, SIGKILL the driver
and resume."""

import contextlib
import io
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

import sdbatch
from sdbatch.output.commits import read_markers
from sdbatch.output.heartbeat import describe, read_progress
from sdbatch.settings import S3Settings
from sdbatch.store import open_store
from tests.support.util import (
    REPO,
    SDBATCH,
    assert_exactly_once,
    demo_job_with,
    processes_under,
    run_cli,
    tiny_rows,
    unwrapped,
    write_manifest,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("tiny_cache")]
JOB = str(REPO / "jobs" / "demo.toml")


def _mixed_rows(bucket: str) -> list[dict]:
    """Ten rows of every kind: 4 text-to-image, 2 img2img and 2 inpainting from images on S3, 2 with a hires pass."""
    rows = tiny_rows(10, label="cat", init_image=None, mask_image=None, strength=None, hires_scale=None, width=None,
                     height=None)
    for row in rows[4:8]:
        row.update(init_image=f"s3://{bucket}/inputs/init.png", strength=0.6)
    for row in rows[6:8]:
        row["mask_image"] = f"s3://{bucket}/inputs/mask.png"
    for row in rows[8:]:
        row.update(hires_scale=1.5, width=64, height=64)
    return rows


def _put_image(store, key: str, pixels: np.ndarray) -> None:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    store.put(key, buffer.getvalue())


def test_submit_to_seaweedfs_then_rerun_resumes_and_other_manifest_is_refused(tmp_path, s3_env, new_bucket):
    rows = _mixed_rows(new_bucket)
    manifest = f"s3://{new_bucket}/manifests/m.parquet"
    store = open_store(output := f"s3://{new_bucket}/run1", S3Settings(endpoint_url=s3_env))
    inputs = open_store(f"s3://{new_bucket}", S3Settings(endpoint_url=s3_env))
    inputs.put("manifests/m.parquet", write_manifest(tmp_path / "m.parquet", rows).read_bytes())
    _put_image(inputs, "inputs/init.png", np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    _put_image(inputs, "inputs/mask.png", np.kron(np.eye(2, dtype=np.uint8) * 255, np.ones((32, 32), np.uint8)))
    args = ["submit", manifest, "--output", output, "--s3-endpoint", s3_env, "--job", JOB,
            "--steps", "2", "--shard-size", "3", "--actors", "2"]
    first = run_cli(*args)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Token authentication" not in first.stderr  # the private Ray's auth stays on, its warning goes
    ids = [r["id"] for r in rows]
    assert_exactly_once(store, ids)
    results = sdbatch.read_results(store)
    assert results.column("label").to_pylist() == ["cat"] * 10  # labels pass through
    assert all(results.column("seed").to_pylist()) and set(results.column("width").to_pylist()) == {64, 96}
    by_id = {r["id"]: r for r in results.to_pylist()}
    assert [by_id[f"r{n:03d}"]["pipeline"] for n in (0, 4, 6, 8)] == ["txt2img", "img2img", "inpaint", "txt2img"]
    assert by_id["r006"]["init_image_sha256"] and by_id["r006"]["mask_image_sha256"] and by_id["r009"]["width"] == 96
    assert "torch" in json.loads(results.column("versions")[0].as_py())
    markers = {k: store.get(k) for k in store.list("_committed/")}
    # The driver indexed every marker and compacted the finished run: readers need no GET per marker.
    gets: list[str] = []
    store.get = lambda key, get=store.get: gets.append(key) or get(key)
    assert read_markers(store, len(markers)).num_rows == len(markers) == 5  # 2 + one per other kind
    assert not [key for key in gets if key.startswith("_committed/")]
    del store.get
    assert store.exists("_compacted.json")
    status = run_cli("status", output, "--s3-endpoint", s3_env)
    assert status.returncode == 0 and "rows_ok: 10" in status.stdout and "finished: True" in status.stdout

    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    assert "0 rendered" in unwrapped(again.stdout) and "5 shards already done" in unwrapped(again.stdout)
    assert {k: store.get(k) for k in store.list("_committed/")} == markers
    assert_exactly_once(store, ids)

    other = write_manifest(tmp_path / "other.parquet", tiny_rows(4))
    refused = run_cli("submit", str(other), *args[2:])
    assert refused.returncode == 2 and "already holds a different run" in refused.stderr
    changed = run_cli(*args[:-2], "--steps", "3", "--actors", "2")  # same manifest, other settings
    assert changed.returncode == 2 and "defaults.steps was 2, now 3" in " ".join(changed.stderr.split())
    assert_exactly_once(store, ids)


def test_model_that_cannot_load_stops_the_run_and_leaves_no_output(tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", tiny_rows(3))
    out = tmp_path / "out"
    result = run_cli("submit", str(manifest), "--output", str(out), "--job", JOB, "--model",
                     "nobody-here/no-such-model", env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert result.returncode == 2, result.stdout + result.stderr
    message = " ".join(result.stderr.split())
    assert "'nobody-here/no-such-model'" in message and "download it first" in message
    assert not out.exists()
    fixed = run_cli("submit", str(manifest), "--output", str(out), "--job", JOB, "--steps", "2")
    assert fixed.returncode == 0, fixed.stderr  # the failed start did not claim the output


def _wait_until_stable(directory: Path, quiet: float = 3.0, limit: float = 60.0) -> set[str]:
    """Markers once no new one has appeared for `quiet` seconds (the killed run's actors have exited)."""
    seen, since, deadline = set(), time.monotonic(), time.monotonic() + limit
    while time.monotonic() < deadline:
        now = set(os.listdir(directory)) if directory.exists() else set()
        if now != seen:
            seen, since = now, time.monotonic()
        elif time.monotonic() - since > quiet:
            return seen
        time.sleep(0.2)
    return seen


def _count(directory: Path) -> int:
    return len(os.listdir(directory)) if directory.exists() else 0


def _committing_actors(out: Path) -> set[str]:
    """The actors that rendered the shards committed so far (each marker's metadata file names its actor)."""
    import pyarrow.parquet as pq

    actors: set[str] = set()
    for marker in (out / "_committed").glob("*.json") if (out / "_committed").exists() else ():
        metadata = json.loads(marker.read_text())["metadata"]
        actors.update(pq.read_table(out / metadata, columns=["actor"]).column("actor").drop_null().to_pylist())
    return actors


# Tiny renders for the fault tests: 20 steps at 32x32 keep a 2-row shard long enough (a few tenths of a
# second on a 2-core CI box) for a fault to land mid-run, at a quarter of the 64x64 cost.
SLOW_TINY = ["--steps", "20", "--width", "32", "--height", "32", "--shard-size", "2", "--actors", "2"]


def test_sigkilled_driver_resumes_without_rerendering_committed_shards(tmp_path):
    """...and `sdbatch status` tells the live driver (its heartbeat) from the killed one."""
    rows = tiny_rows(24)
    manifest = write_manifest(tmp_path / "m.parquet", rows)
    out = tmp_path / "out"
    args = ["submit", str(manifest), "--output", str(out), "--job", demo_job_with(tmp_path, heartbeat_seconds=0.5),
            *SLOW_TINY]
    driver = subprocess.Popen([*SDBATCH, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    markers_dir = out / "_committed"
    deadline = time.monotonic() + 180
    while _count(markers_dir) < 3:
        assert driver.poll() is None and time.monotonic() < deadline, "run ended before it could be killed"
        time.sleep(0.05)
    store = open_store(str(out))
    assert describe(read_progress(store)).startswith("running (last heartbeat")
    actors = processes_under(driver.pid, "ray::RenderActor")  # the only writers of markers
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    _, alive = psutil.wait_procs(actors, timeout=60)  # Ray's fate-sharing takes them down with the driver
    assert not alive, f"actors outlived their driver: {alive}"
    committed = _wait_until_stable(markers_dir, quiet=0.5)  # nothing is left to write one; check that
    assert 3 <= len(committed) < 12, "the kill should land mid-run"
    before = {name: (markers_dir / name).read_bytes() for name in committed}
    time.sleep(max(0.0, read_progress(store)["updated"] + 4 * 0.5 - time.time()))  # 4 beats missed
    status = run_cli("status", str(out))
    assert "driver: not running: no heartbeat for" in status.stdout, status.stdout + status.stderr
    assert "rerun the same command to resume" in status.stdout

    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert_exactly_once(store, [r["id"] for r in rows])
    ended = run_cli("status", str(out)).stdout
    assert "driver: ended " in ended and ": 12 of 12 shards done" in ended
    for name, content in before.items():
        assert (markers_dir / name).read_bytes() == content  # committed shards were not redone
    last = json.loads(store.get("_SUCCESS.json"))["last_run"]
    assert last["shards_skipped"] == len(committed)
    assert last["rows_rendered"] + last["rows_adopted"] == 24 - 2 * len(committed)


def test_a_killed_actor_and_a_stopped_one_are_replaced_and_their_shards_requeued(tmp_path):
    """One actor SIGKILLed (as the OOM killer would): its shards come back as lost. The other SIGSTOPped (a
    hung device, a deadlock): alive to the OS and to Ray, answering nothing; past the hung threshold it is
    killed, mid-run. Both are replaced, and every row is rendered once."""
    rows = tiny_rows(40)  # 20 shards of 2: the faults land with most of the run's work left
    manifest = write_manifest(tmp_path / "m.parquet", rows)
    out = tmp_path / "out"
    args = ["submit", str(manifest), "--output", str(out), "--job", demo_job_with(tmp_path, hung_shard_seconds=4.0),
            *SLOW_TINY]
    driver = subprocess.Popen([*SDBATCH, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True)
    deadline = time.monotonic() + 180
    # Both actors past their warm-up and rendering: one frozen while it still loads its model is a start that
    # never ends (run.start_timeout's), not a hung shard, and the run would end without the hang check.
    while len(_committing_actors(out)) < 2:
        assert driver.poll() is None and time.monotonic() < deadline, "run ended before an actor was killed"
        time.sleep(0.05)
    victims = processes_under(driver.pid, "ray::RenderActor")
    assert len(victims) == 2
    for victim in victims:  # both frozen at once: from here on only the replacements commit
        victim.suspend()
    # More shards left than the two actors can hold in flight (2 each): whatever each held when frozen, it holds
    # or is given work it never finishes, so the faults are the run's to notice, not past its end.
    assert 20 - _count(out / "_committed") > 4, "the run was nearly done before the faults; it tests nothing"
    killed, stopped = victims
    killed.kill()
    killed_mid_run = False
    try:
        while driver.poll() is None and not killed_mid_run:
            try:
                killed_mid_run = stopped.status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                killed_mid_run = True
            time.sleep(0.2)
        output, _ = driver.communicate(timeout=300)
    finally:  # whatever failed, leave no stopped process on the machine
        with contextlib.suppress(psutil.Error):
            stopped.kill()
    assert driver.returncode == 0, output
    assert killed_mid_run, "the stopped actor outlived the hang check"
    store = open_store(str(out))
    assert_exactly_once(store, [r["id"] for r in rows])
    last = json.loads(store.get("_SUCCESS.json"))["last_run"]
    assert (last["actors_lost"], last["actors_hung"], last["actors"]) == (2, 1, 2), (last, output)
