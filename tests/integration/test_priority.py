"""CPU threads and process priorities in a real local Ray: its daemons and threads yield to the render actors."""

import pytest

from sdbatch.settings import RendererSettings
from sdbatch.store.local import LocalStore


@pytest.mark.slow
def test_cpu_threads_and_priority_take_effect_in_ray_workers(tmp_path, tiny_cache):
    import os
    import threading

    ray = pytest.importorskip("ray")
    from sdbatch.engine.actor import RemoteRenderActor
    from sdbatch.engine.cluster import connect
    from sdbatch.engine.priority import descendants, threads

    def nice(tid: int) -> int:
        return os.getpriority(os.PRIO_PROCESS, tid)

    own_threads, own_nice = threads(), nice(threading.get_native_id())
    connect(None)  # the private local Ray a run starts
    try:
        # Its own daemons yield to the actors: a raylet at nice 0 preempts a CPU render's threads.
        daemons = {pid: open(f"/proc/{pid}/cmdline", "rb").read() for pid in descendants(os.getpid())}
        raylets = [pid for pid, cmd in daemons.items() if b"raylet/raylet" in cmd]
        assert raylets and all(nice(pid) == 19 for pid in raylets)
        # So do the threads ray.init started in this process; the caller's own threads keep their nice.
        assert {nice(tid) for tid in threads() - own_threads} == {19}
        assert nice(threading.get_native_id()) == own_nice
        # num_cpus=1: Ray sets OMP_NUM_THREADS=1 in the worker, so torch starts with one thread.
        actor = RemoteRenderActor.options(num_cpus=1).remote(
            LocalStore(str(tmp_path)), RendererSettings(cpu_threads=2, device="cpu"))
        warm = ray.get(actor.warm.remote("tiny:sd15"), timeout=120)
        assert "2 threads" in warm["device"]
        # Ray starts a worker's main thread at nice 15 and its RPC threads at 0. In a render actor the
        # device thread takes nice 0 where it is allowed to, and Ray's threads go behind it.
        pid, device = warm["pid"], warm["device_thread"]
        names = {tid: open(f"/proc/{pid}/task/{tid}/comm").read().strip() for tid in threads(pid)}
        rays = [tid for tid, name in names.items() if name in ("worker.io", "client.poll0", "server.poll0")]
        assert nice(device) == 0 if os.geteuid() == 0 else nice(device) > 0
        assert rays and {nice(tid) for tid in rays} == {19}
    finally:
        ray.shutdown()
