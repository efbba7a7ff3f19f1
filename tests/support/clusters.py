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

    def nodes_with_actors(self) -> list:
        """Worker nodes whose raylet runs a RenderActor process."""
        import psutil

        def is_actor(process) -> bool:
            try:
                return "RenderActor" in " ".join(process.cmdline())
            except psutil.Error:  # exited (or a zombie) between listing and reading
                return False

        hosting = []
        for node in self.workers:
            raylets = [p.process.pid for p in node.all_processes.get("raylet", [])]
            children = []
            for pid in raylets:
                try:
                    children += psutil.Process(pid).children(recursive=True)
                except psutil.Error:
                    pass
            if any(is_actor(c) for c in children):
                hosting.append(node)
        return hosting

    def remove(self, node, graceful: bool = False) -> None:
        """SIGKILL the node's processes (a lost machine), or SIGTERM them first (a shutdown with notice)."""
        self.workers.remove(node)
        self.cluster.remove_node(node, allow_graceful=graceful)

    def drain(self, node, reason: str = "DRAIN_NODE_REASON_PREEMPTION", deadline_s: int = 1) -> None:
        """Tell the GCS the node goes away soon, as an autoscaler does on a spot preemption notice."""
        import subprocess

        subprocess.run([str(Path(sys.executable).parent / "ray"), "drain-node", "--address", self.address,
                        "--node-id", node.node_id, "--reason", reason, "--reason-message", "spot preemption notice",
                        "--deadline-remaining-seconds", str(deadline_s)], check=True, capture_output=True)

    def shutdown(self) -> None:
        self.cluster.shutdown()
