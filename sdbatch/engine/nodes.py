"""What Ray tells of its nodes: a private Ray whose node died, a node that ended with notice, room for an actor."""

from __future__ import annotations

import os
import signal
from typing import Any

import ray
from ray.core.generated.common_pb2 import NodeDeathInfo

# How a node ended when it was told first: drained for a spot preemption or for being idle, or stopped
# with SIGTERM (what a cloud's shutdown or `ray stop` sends). Its actors' work is not at fault.
WITH_NOTICE = frozenset({NodeDeathInfo.EXPECTED_TERMINATION, NodeDeathInfo.AUTOSCALER_DRAIN_PREEMPTED,
                         NodeDeathInfo.AUTOSCALER_DRAIN_IDLE})


def private_ray_lost() -> str | None:
    """Why the private Ray can run nothing more (its one node dead: the raylet killed, or its dashboard agent,
    which the raylet fate-shares with), or None while it is alive."""
    nodes = ray.nodes()
    if any(node["Alive"] for node in nodes):
        return None
    why = "; ".join(sorted({node.get("DeathReasonMessage") or "no reason given" for node in nodes}))
    return f"the private Ray's node died (its raylet is gone: {why})"


class NodeFates:
    """Whether dead nodes were drained or stopped with notice (True) or died (False), asked of Ray once per
    dead node: its actors' shards come back together."""

    def __init__(self) -> None:
        self.known: dict[str, bool] = {}

    def ended_with_notice(self, node_id: str) -> bool:
        """False too while the node is alive or unknown: an actor lost on it died of something else."""
        if node_id and node_id not in self.known:
            for node in ray.nodes():
                if node["NodeID"] == node_id and not node["Alive"]:
                    self.known[node_id] = node.get("DeathReason") in WITH_NOTICE
        return self.known.get(node_id, False)


def never_fits(needs: dict[str, float]) -> str | None:
    """On a private Ray (one node, no autoscaler), why an actor asking for `needs` can never be placed."""
    have: dict[str, Any] = ray.cluster_resources()
    short = {name: amount for name, amount in needs.items() if amount and have.get(name, 0) < amount}
    if not short:
        return None
    asked = ", ".join(f"{amount:g} {name}" for name, amount in short.items())
    held = ", ".join(f"{have.get(name, 0):g} {name}" for name in short)
    return f"each actor asks for {asked}, and this machine's Ray has {held}"


def end_orphans(pids: list[int]) -> None:
    """SIGKILL the actor processes of a private Ray whose raylet died: they outlive it (adopted by init) and
    hold memory, a GPU's too, that the next private Ray's actors need. Only processes still titled `ray::`
    (Linux: read from /proc), so a reused pid is left alone."""
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as title:
                if title.read().startswith(b"ray::"):
                    os.kill(pid, signal.SIGKILL)
        except OSError:  # gone already, or no /proc (not Linux): nothing to end
            pass
