"""The driver's heartbeat: written at its interval once the output is claimed, read as live, gone, ended."""

import json
import time

import pytest

from sdbatch.errors import StoreUnavailable
from sdbatch.output.heartbeat import PROGRESS_KEY, STALE_INTERVALS, Heartbeat, describe, read_progress
from sdbatch.store.local import LocalStore


def test_nothing_is_written_before_start_and_beats_come_at_the_interval(tmp_path):
    store = LocalStore(str(tmp_path))
    heartbeat = Heartbeat(store, interval=3600.0, shards_total=10, shards_before=4)
    heartbeat.beat({"shards_done": 1, "actors": 2, "actors_ready": 2})
    heartbeat.end("stopped", "no actor")
    assert read_progress(store) is None  # not claimed: the output stays untouched
    heartbeat.start()
    first = read_progress(store)
    assert first["state"] == "running" and first["shards_total"] == 10
    heartbeat.beat({"shards_done": 3, "actors": 2, "actors_ready": 1})
    assert read_progress(store) == first  # within the interval: no write
    heartbeat.interval = 0.0
    heartbeat.beat({"shards_done": 3, "actors": 2, "actors_ready": 1, "shards_in_flight": 2})
    doc = read_progress(store)
    assert doc["shards_done"] == 7 and doc["actors_ready"] == 1  # the run's shards, not this invocation's
    assert describe(doc).startswith("running (last heartbeat 0 s ago")
    heartbeat.end("ended", "10 of 10 shards done", shards_done=10)
    ended = read_progress(store)
    assert describe(ended).endswith(": 10 of 10 shards done")
    assert ended["shards_done"] == 10 and "shards_in_flight" not in ended  # not the pool's last, older tick


def test_a_heartbeat_several_intervals_old_says_the_driver_is_gone():
    now = time.time()
    doc = {"state": "running", "updated": now - 40 * 60, "updated_at": "x", "interval_seconds": 30.0,
           "host": "box", "pid": 7}
    assert describe(doc, now).startswith("not running: no heartbeat for 40 min (its driver on box, pid 7")
    doc["updated"] = now - (STALE_INTERVALS * 30.0 - 1)
    assert describe(doc, now).startswith("running")
    assert describe({**doc, "state": "stopped", "reason": "Ray lost"}, now).endswith(": Ray lost")
    assert describe(None, now) == "no driver has rendered into this output yet"


def test_a_heartbeat_the_store_refuses_fails_nothing(tmp_path):
    store = LocalStore(str(tmp_path))

    def refuse(key, data):
        raise StoreUnavailable("the endpoint answered 503 after 8 attempts")

    store.put = refuse
    heartbeat = Heartbeat(store, interval=0.0, shards_total=1, shards_before=0)
    heartbeat.start()
    heartbeat.beat({"shards_done": 1})
    heartbeat.end("ended")
    del store.put
    assert not store.exists(PROGRESS_KEY)


def test_beating_writes_from_a_thread_while_the_driver_works_outside_the_loop(tmp_path):
    store = LocalStore(str(tmp_path))
    heartbeat = Heartbeat(store, interval=0.05, shards_total=1, shards_before=0)
    heartbeat.start()
    written = json.loads(store.get(PROGRESS_KEY))["updated"]
    with heartbeat.beating():
        deadline = time.monotonic() + 5
        while json.loads(store.get(PROGRESS_KEY))["updated"] == written:
            assert time.monotonic() < deadline, "no beat while the block ran"
            time.sleep(0.02)


@pytest.mark.parametrize("seconds, shown", [(5, "5 s"), (600, "10 min"), (3 * 3600, "3.0 h")])
def test_ages_read_in_units_people_use(seconds, shown):
    doc = {"state": "ended", "updated": 1000.0, "updated_at": "t", "host": "h", "pid": 1}
    assert describe(doc, 1000.0 + seconds).startswith(f"ended {shown} ago")
