"""A run that cannot progress says so and stops, or heals itself: on a real private Ray, with real faults (the
raylet SIGKILLed, a pool that can never start). A SIGSTOPped actor and a SIGKILLed driver's heartbeat: test_e2e."""

import contextlib
import json
import os
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from sdbatch.store import open_store
from tests.support.util import (
    REPO,
    SDBATCH,
    assert_exactly_once,
    processes_under,
    run_cli,
    tiny_rows,
    unwrapped,
    write_manifest,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("tiny_cache")]
JOB = str(REPO / "jobs" / "demo.toml")
# 2-row shards of 60 steps at 32x32: the run goes on for seconds after its first marker, so the fault lands mid-run.
SLOW_TINY = ["--steps", "60", "--width", "32", "--height", "32", "--shard-size", "2", "--actors", "2"]


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([*SDBATCH, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def wait_for_markers(driver: subprocess.Popen, out: Path, count: int, limit: float = 180) -> None:
    deadline = time.monotonic() + limit
    folder = out / "_committed"
    while not folder.exists() or len(os.listdir(folder)) < count:
        assert driver.poll() is None and time.monotonic() < deadline, "the run ended before the fault"
        time.sleep(0.05)


def stop_for_good(actors: list[psutil.Process], raylet: int, limit: float = 30) -> None:
    """SIGSTOP the actors until they stay stopped (or have exited on finding their raylet dead): each Ray worker
    leads its own process group, and when the dead raylet's last thread lets its children go, the kernel
    continues (SIGHUP, SIGCONT) the stopped members of the groups it orphans. Once they are init's, a stop holds."""
    deadline = time.monotonic() + limit
    while not all(_held(actor, raylet) for actor in actors):
        assert time.monotonic() < deadline, "the actors of the dead raylet could not be stopped"
        time.sleep(0.2)


def _held(actor: psutil.Process, raylet: int) -> bool:
    try:
        if actor.ppid() != raylet and actor.status() == psutil.STATUS_STOPPED:
            return True
        actor.suspend()
        return False
    except psutil.NoSuchProcess:
        return True


def test_the_private_rays_raylet_killed_mid_run_restarts_ray_and_the_run_completes_once(tmp_path):
    rows = tiny_rows(32)
    manifest = write_manifest(tmp_path / "m.parquet", rows)
    out = tmp_path / "out"
    args = ["submit", str(manifest), "--output", str(out), "--job", JOB, *SLOW_TINY]
    driver = start(args)
    wait_for_markers(driver, out, 1)
    raylets, actors = processes_under(driver.pid, "raylet"), processes_under(driver.pid, "ray::RenderActor")
    assert len(raylets) == 1 and len(actors) == 2
    killed = time.monotonic()
    raylets[0].kill()  # as the OOM killer would; the dashboard agent's death takes the raylet with it too
    markers = len(os.listdir(out / "_committed"))
    try:
        # Its actors outlive it for a while, adopted by init and still rendering: stopped, they stand for a node
        # whose work died with it, and the run can only end by finding that out.
        stop_for_good(actors, raylets[0].pid)
        assert markers < 16, f"the fault landed after the run's last shard ({markers} markers at the kill)"
        output, _ = driver.communicate(timeout=300)
        assert time.monotonic() - killed < 300
        assert driver.returncode == 0, output
        said = unwrapped(output)
        assert "the private Ray's node died" in said and "starting a new private Ray (1 of at most 2)" in said, said
        assert not psutil.wait_procs(actors, timeout=10)[1], "the dead Ray's actors were left running"
    finally:  # whatever failed, leave no stopped process on the machine
        for actor in actors:
            with contextlib.suppress(psutil.Error):
                actor.kill()
    store = open_store(str(out))
    assert_exactly_once(store, [r["id"] for r in rows])
    assert json.loads(store.get("_SUCCESS.json"))["last_run"]["ray_restarts"] == 1

    again = run_cli(*args)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 rendered" in unwrapped(again.stdout) and "16 shards already done" in unwrapped(again.stdout)
    assert_exactly_once(store, [r["id"] for r in rows])


def test_a_pool_that_can_never_start_stops_with_exit_1_and_writes_nothing(tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", tiny_rows(4))
    out = tmp_path / "out"
    started = time.monotonic()
    result = run_cli("submit", str(manifest), "--output", str(out), "--job", JOB, "--device", "cuda")
    assert result.returncode == 1, result.stdout + result.stderr
    assert time.monotonic() - started < 120
    message = " ".join(result.stderr.split())
    assert "no actor can ever start here: each actor asks for 1 GPU, and this machine's Ray has 0 GPU" in message
    assert "--device auto or cpu" in message
    assert not out.exists()
