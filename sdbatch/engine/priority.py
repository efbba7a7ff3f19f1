"""CPU priorities on one machine: a CPU render's threads first, the private Ray's own work after it (Linux)."""

from __future__ import annotations

import os
import threading

# The lowest priority an unprivileged process may give; Ray's daemons and I/O threads only need a core
# for short wake-ups, and then one is free soon enough.
BACKGROUND = 19


def threads(pid: int | str = "self") -> set[int]:
    """The thread ids of a process: Linux keeps a nice value per thread, not per process."""
    try:
        return {int(task) for task in os.listdir(f"/proc/{pid}/task")}
    except OSError:  # not Linux, or the process ended
        return set()


def lower(tids: set[int], nice: int = BACKGROUND) -> None:
    """Move threads to `nice` where that lowers them; never raises them (that needs privileges)."""
    for tid in tids:
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < nice:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
        except OSError:  # ended meanwhile
            continue


def favour_calling_thread() -> None:
    """In a Ray worker: the calling thread, which renders, to nice 0 where allowed (root, CAP_SYS_NICE;
    Ray starts a worker's main thread at 15); the threads already running (Ray's RPC and I/O threads,
    at the nice they were started with) to 19. Threads it starts later (torch's OpenMP pool, the image
    pools) inherit its nice."""
    me = threading.get_native_id()
    lower(threads() - {me})
    try:
        if os.getpriority(os.PRIO_PROCESS, me) > 0:
            os.setpriority(os.PRIO_PROCESS, me, 0)
    except OSError:  # not permitted: the thread keeps the priority Ray started the worker with
        pass


def descendants(root: int) -> list[int]:
    """Every process below `root`, from /proc (empty where there is no /proc)."""
    children: dict[int, list[int]] = {}
    for name in filter(str.isdigit, os.listdir("/proc") if os.path.isdir("/proc") else []):
        try:
            with open(f"/proc/{name}/stat") as f:
                parent = int(f.read().rpartition(")")[2].split()[1])  # after "(comm)": state, ppid
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
