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


class LocalCluster:
    """Head (1 CPU, no GPU, dashboard + Jobs API) and `workers` nodes with fake GPUs."""

    def __init__(self, workers: int = 2, gpus_per_worker: int = 1, cpus_per_worker: int = 1):
        from ray.cluster_utils import Cluster

        # The cluster's processes inherit this environment; Ray Jobs entrypoints need `sdbatch` on PATH.
        os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
        port = _free_port()
        # Cluster records its address in /tmp/ray/ray_current_cluster and fails if the folder is missing.
        os.makedirs(os.path.join(tempfile.gettempdir(), "ray"), exist_ok=True)
        self.temp_dir = tempfile.mkdtemp(prefix="sdb-cl-", dir="/tmp")  # short: unix socket paths
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "num_gpus": 0, "include_dashboard": True, "dashboard_host": "127.0.0.1",
            "dashboard_port": port, "temp_dir": self.temp_dir})
        self.workers = [self.cluster.add_node(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker)
                        for _ in range(workers)]
        self.cluster.wait_for_nodes()
        self.address = self.cluster.address  # for drivers: --address HOST:PORT
        self.dashboard = f"http://127.0.0.1:{port}"  # for the Jobs API: --address http://...

    def nodes_with_actors(self) -> list:
        """Worker nodes whose raylet runs a RenderActor process."""
        import psutil

        hosting = []
        for node in self.workers:
            raylets = [p.process.pid for p in node.all_processes.get("raylet", [])]
            children = [c for pid in raylets for c in psutil.Process(pid).children(recursive=True)]
            if any("RenderActor" in " ".join(c.cmdline()) for c in children):
                hosting.append(node)
        return hosting

    def remove(self, node) -> None:
        self.workers.remove(node)
        self.cluster.remove_node(node, allow_graceful=False)

    def shutdown(self) -> None:
        self.cluster.shutdown()
