"""A multi-node Ray cluster on one machine, for tests: a head with no CPU (so every trial runs on
another node), started in this process by `ray.cluster_utils.Cluster`, plus worker nodes that
`ray start --address HEAD --block` starts in their own mount and PID namespaces (`unshare`, as
root): a tmpfs mounted over `hidden` (the driver's sweep folder) keeps it out of their sight, so
a trial that wrote to the driver's paths would fail, and killing a node's first process by its
PID ends every process of that node, as losing the machine would. Without `unshare` the nodes
start in another working folder only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))


def namespaces_work() -> bool:
    """Whether this process may make mount and PID namespaces (root, unshare available)."""
    try:
        probe = subprocess.run(
            ["unshare", "--mount", "--pid", "--fork", "--mount-proc", "true"],
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


class Nodes:
    """The head (a `Cluster` in this process, which is its driver) and the worker nodes this
    test started."""

    def __init__(self, hidden: Path, logs: Path) -> None:
        import ray
        from ray.cluster_utils import Cluster

        self.hidden, self.logs = hidden, logs
        self.isolated = namespaces_work()
        self.workers: list[subprocess.Popen] = []
        self.cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 0,
                "include_dashboard": True,  # Train's placement-group cleanup needs its State API
                "dashboard_host": "127.0.0.1",
                # a killed node is declared dead within seconds, not Ray's default ~30 s
                "_system_config": {
                    "health_check_period_ms": 1000,
                    "health_check_failure_threshold": 5,
                },
            },
        )
        ray.init(address=self.cluster.address, log_to_driver=False)

    @property
    def address(self) -> str:
        return self.cluster.address

    def add(self, cpus: int) -> subprocess.Popen:
        """Start a worker node with `cpus` CPUs and wait until the head counts it alive."""
        start = f"exec {RAY} start --address={self.address} --num-cpus={cpus} --block"
        if self.isolated:
            command = [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--pid",
                "--fork",
                "--mount-proc",
                "--kill-child",
                "sh",
                "-c",
                f"mount -t tmpfs none {self.hidden} && {start}",
            ]
        else:
            command = ["sh", "-c", start]
        log = open(self.logs / f"node-{len(self.workers)}.log", "w")
        node = subprocess.Popen(
            command, cwd=self.logs, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.workers.append(node)
        self.wait_for(sum(w.poll() is None for w in self.workers) + 1)
        return node

    def kill(self, node: subprocess.Popen) -> None:
        """SIGKILL a worker node: its first process (the PID namespace's init: every process
        of the node dies with it; without namespaces, its process group)."""
        if self.isolated:
            os.kill(node.pid, signal.SIGKILL)
        else:
            os.killpg(node.pid, signal.SIGKILL)
        node.wait(timeout=60)

    def wait_for(self, alive: int, timeout: float = 120) -> None:
        """Wait until the head counts `alive` nodes (itself included)."""
        import ray

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(n["Alive"] for n in ray.nodes()) == alive:
                return
            time.sleep(0.5)
        raise TimeoutError(f"the cluster did not reach {alive} alive nodes in {timeout:g} s")

    def shutdown(self) -> None:
        import ray

        if self.cluster is None:
            return
        ray.shutdown()
        for node in self.workers:
            if node.poll() is None:
                self.kill(node)
        self.cluster.shutdown()
        self.cluster = None
