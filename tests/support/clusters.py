"""A real multi-node Ray on one machine for failure tests: a head plus worker nodes as separate processes,
with fake GPU counts; started and stopped without touching any other Ray on the machine."""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_ports(n: int) -> list[int]:
    """n distinct ports that were free a moment ago (held open together so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class LocalCluster:
    """Head (1 CPU, no GPU, dashboard + Jobs API) and `workers` nodes with fake GPUs."""

    def __init__(self, workers: int = 2, gpus_per_worker: int = 1, cpus_per_worker: int = 1):
        from ray.cluster_utils import Cluster

        # The cluster's processes inherit this environment; Ray Jobs entrypoints need `sdbatch` on PATH.
        os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
        port, agent_port = _free_ports(2)
        # Cluster records its address in /tmp/ray/ray_current_cluster and fails if the folder is missing.
        os.makedirs(os.path.join(tempfile.gettempdir(), "ray"), exist_ok=True)
        self.temp_dir = tempfile.mkdtemp(prefix="sdb-cl-", dir="/tmp")  # short: unix socket paths
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "num_gpus": 0, "include_dashboard": True, "dashboard_host": "127.0.0.1",
            "dashboard_port": port, "temp_dir": self.temp_dir,
            # The head's job agent defaults to port 52365, which any other Ray on the machine (another
            # test session's local Ray) may hold: then every job submission fails with "No available
            # agent" after a 2-minute wait. Worker nodes already get a free port from Cluster.
            "dashboard_agent_listen_port": agent_port})
        self.workers = [self.cluster.add_node(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker)
                        for _ in range(workers)]
        self.cluster.wait_for_nodes()
        # A Ray Job's driver gets RAY_ADDRESS from `<temp_dir>/ray_current_cluster`; Cluster writes that file
        # only under /tmp/ray, and without it Ray picks *any* gcs_server running on the machine (another
        # session's local Ray), so the job's driver would join the wrong cluster now and then.
        Path(self.temp_dir, "ray_current_cluster").write_text(self.cluster.gcs_address)
        self.address = self.cluster.address  # for drivers: --address HOST:PORT
        self.dashboard = f"http://127.0.0.1:{port}"  # for the Jobs API: --address http://...

    def actors_on(self, node) -> list:
        """The RenderActor processes under the node's raylet."""
        import psutil

        from tests.support.util import processes_under

        actors = []
        for raylet in node.all_processes.get("raylet", []):
            try:
                actors += processes_under(raylet.process.pid, "ray::RenderActor")
            except psutil.Error:  # the raylet is gone
                pass
        return actors

    def nodes_with_actors(self) -> list:
        """Worker nodes whose raylet runs a RenderActor process."""
        return [node for node in self.workers if self.actors_on(node)]

    def remove(self, node, graceful: bool = False) -> None:
        """SIGKILL the node's processes, its actors too (a lost machine: a raylet's workers would outlive it),
        or SIGTERM them (a shutdown with notice: the raylet ends its workers itself)."""
        import psutil

        actors = self.actors_on(node)
        self.workers.remove(node)
        self.cluster.remove_node(node, allow_graceful=graceful)
        if not graceful:
            for actor in actors:
                try:
                    actor.kill()
                except psutil.Error:
                    pass

    def wait_settled(self, limit: float = 60.0) -> None:
        """Until Ray counts as alive exactly the head and the workers: a node SIGKILLed moments ago is still
        alive to it (and its GPUs offered) until its health checks fail."""
        import time

        from ray.util.state import list_nodes

        deadline = time.monotonic() + limit
        def alive() -> int:
            # The filter is applied after the count of all nodes: dead ones make it look truncated.
            return len(list_nodes(address=self.dashboard, filters=[("state", "=", "ALIVE")],
                                  raise_on_missing_output=False))

        while alive() != 1 + len(self.workers):
            assert time.monotonic() < deadline, "the cluster's nodes did not settle"
            time.sleep(0.5)

    def drain(self, node, reason: str = "DRAIN_NODE_REASON_PREEMPTION", deadline_s: int = 1) -> None:
        """Tell the GCS the node goes away soon, as an autoscaler does on a spot preemption notice."""
        import subprocess

        subprocess.run([str(Path(sys.executable).parent / "ray"), "drain-node", "--address", self.address,
                        "--node-id", node.node_id, "--reason", reason, "--reason-message", "spot preemption notice",
                        "--deadline-remaining-seconds", str(deadline_s)], check=True, capture_output=True)

    def shutdown(self) -> None:
        self.cluster.shutdown()
