"""The dispatcher's watch without Ray: the hung threshold follows the run's shard times, a stalled pool's clock."""

from sdbatch.engine.watch import RECENT_SHARDS, ShardClock, SlotTimer, Stall, pool_story


def test_the_hung_threshold_is_the_floor_until_peers_are_slower_then_follows_them():
    clock = ShardClock(floor=60.0, factor=10.0)
    assert clock.threshold == 60.0  # no peers yet: the floor
    clock.finished(2.0)
    assert clock.threshold == 60.0  # 10 x 2 s is under the floor
    clock.finished(30.0)
    assert clock.threshold == 300.0  # one slow peer raises the bar
    for _ in range(RECENT_SHARDS):
        clock.finished(3.0)
    assert clock.threshold == 60.0  # the slow one has left the window: the bar follows the run


def test_an_actors_head_shard_is_timed_from_its_predecessors_return():
    timer = SlotTimer()
    timer.sent(in_flight_before=0, now=100.0)  # an idle actor starts at once
    timer.sent(in_flight_before=1, now=101.0)  # the second waits behind the first: no new start
    assert timer.running_for(110.0) == 10.0
    assert timer.returned(in_flight_after=1, now=112.0) == 12.0
    assert timer.running_for(115.0) == 3.0  # the second has run since the first came back
    assert timer.returned(in_flight_after=0, now=120.0) == 8.0
    assert timer.running_for(500.0) == 0.0  # idle: nothing can be hung


def test_a_stall_is_timed_from_the_last_live_actor_and_said_at_intervals():
    stall = Stall(timeout=100.0, notice_every=30.0)
    stall.update(live=True, now=0.0)
    assert not stall.expired(1000.0) and not stall.notice_due(1000.0)
    stall.update(live=False, now=10.0)
    stall.update(live=False, now=50.0)  # still stalled: the clock keeps its start
    assert stall.waited(50.0) == 40.0
    assert [t for t in (20.0, 41.0, 45.0, 72.0) if stall.notice_due(t)] == [41.0, 72.0]
    assert not stall.expired(110.0) and stall.expired(111.0)
    stall.update(live=True, now=112.0)  # an actor came back: the clock stops and restarts from zero
    stall.update(live=False, now=200.0)
    assert not stall.expired(250.0) and stall.waited(250.0) == 50.0


def test_a_stalled_pool_says_what_it_waits_for():
    assert pool_story(2, [], "1 GPU") == ("2 actor(s) waiting for room on the cluster (each asks for 1 GPU); "
                                          "`ray status` shows what it has")
    assert pool_story(0, ["tiny:sd15", "tiny:sd15"], "1 GPU") == "2 actor(s) still loading tiny:sd15"
    assert pool_story(1, ["m"], "").startswith("1 actor(s) waiting for room on the cluster; ")
    assert pool_story(0, [], "1 GPU") == "every actor was lost"


def test_a_shard_of_costlier_rows_is_judged_by_its_work_not_by_cheaper_shards_times():
    clock = ShardClock(floor=60.0, factor=10.0)
    clock.finished(20.0, work=32)  # a shard of 32 plain rows
    assert clock.threshold_for(32) == 200.0
    assert clock.threshold_for(32 * 17) == 3400.0  # hires x4: each row is 17 plain rows' work
    clock.finished(300.0, work=32 * 17)  # faster per unit of work than the plain shard: the bar stays
    assert clock.threshold_for(32) == 200.0
    clock.finished(680.0, work=32 * 17)  # 1.25 s per unit, twice the plain shard's: the bar doubles
    assert clock.threshold_for(32) == 400.0
