"""The Ray a sweep runs on: start a local one or attach to a cluster, and what a trial holds.

A 1-worker trial trains inside its own Tune trial actor, which holds exactly the worker's CPUs
and GPUs. A trial with several workers is a Tune actor that only launches a Ray Train
`TorchTrainer`: it holds a token bundle (`DDP_LAUNCHER`, no CPU) and its Train workers hold the
real CPUs and GPUs. Either way Ray's logical resources match the machine's.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
from pathlib import Path

from sft_tune.errors import fail
from sft_tune.sweep.space import Resources, Sweep

log = logging.getLogger(__name__)

CONTROLLER_FAILURE_LIMIT = 3
# The bundle of a trial that only launches a TorchTrainer: no CPU (its workers hold them), and
# one byte of memory because Ray rejects an empty bundle.
DDP_LAUNCHER = {"cpu": 0, "memory": 1}


def in_actor(sweep: Sweep) -> bool:
    """Whether a trial trains inside its Tune trial actor (one worker) or through Ray Train DDP."""
    return sweep.search.resources.workers == 1


def trial_resources(sweep: Sweep) -> dict[str, float]:
    """The `tune.with_resources` request of one trial."""
    res = sweep.search.resources
    if in_actor(sweep):
        return {"cpu": res.cpus_per_worker, "gpu": res.gpus_per_worker}
    return DDP_LAUNCHER


def trial_need(sweep: Sweep) -> tuple[float, float]:
    """CPUs and GPUs one trial holds, with its Train workers."""
    return need_of(sweep.search.resources)


def need_of(res: Resources) -> tuple[float, float]:
    """CPUs and GPUs a trial with these resources holds."""
    return res.workers * res.cpus_per_worker, res.workers * res.gpus_per_worker


def start_ray(sweep: Sweep, address: str | None) -> bool:
    """Attach to a cluster or start a local Ray; True when this call started it."""
    import ray

    # Read by the Train controllers of a local Ray (they inherit this process's environment).
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "120")
    if ray.is_initialized():
        check_resources(sweep)
        return False
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address or os.environ["RAY_ADDRESS"])
        _warn_node_local_storage(sweep)
    else:
        # A private local instance, also when a `ray start` cluster runs on this machine (Ray
        # would attach to it and refuse num_cpus). The dashboard stays on: it serves users, and
        # Train's placement-group cleaner needs its State API when a scheduler stops a
        # multi-worker trial.
        running = _running_cluster()
        if running:
            log.warning(
                "a Ray cluster started with `ray start` runs on this machine (%s); this sweep "
                "starts its own local Ray instance. To run on that cluster: --address auto",
                running,
            )
        ray.init(
            address="local",
            num_cpus=os.cpu_count() or 1,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            log_to_driver=True,
            # Ray nices its workers to 15; the trials are this machine's work, and on a few
            # cores Ray's own daemons then preempt the trial's torch threads (measured on 2
            # cores: training 15% slower in the trial actor than in a plain process; 1.00 at 0).
            _system_config={"worker_niceness": 0},
        )
    try:
        check_resources(sweep)
    except Exception:
        stop_ray()
        raise
    return True


def stop_ray() -> None:
    """Disconnect from Ray; a local Ray this process started stops, in 0.1 s instead of 1.3 s
    (`compat.end_local_monitor`)."""
    import ray

    from sft_tune.compat import end_local_monitor

    try:
        end_local_monitor()
    finally:
        ray.shutdown()


def _running_cluster() -> str | None:
    """The address of a cluster started on this machine with `ray start` (the one a plain
    `ray.init()` would attach to), if any."""
    try:
        from sft_tune.compat import local_cluster_address

        return local_cluster_address()
    except Exception:  # a private helper of Ray: only a better message depends on it
        return None


def _warn_node_local_storage(sweep: Sweep) -> None:
    """A multi-node sweep needs storage every node reaches; say so when storage_path is a plain
    path."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1 and "://" not in sweep.search.storage_path:
        log.warning(
            "search.storage_path %s is a local path on a %d-node cluster: unless it is a shared "
            "file system "
            "mounted on every node, trials on other nodes cannot write results and checkpoints "
            "there. "
            "Use s3://bucket/path, gs://bucket/path or a shared mount.",
            sweep.search.storage_path,
            len(nodes),
        )


def local_gpus() -> int:
    """GPUs a local Ray would see, without importing torch: CUDA_VISIBLE_DEVICES, else
    `nvidia-smi -L` (0 without it)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(line.startswith("GPU ") for line in listed.stdout.splitlines())


def check_local_resources(resources: Resources) -> None:
    """For a sweep on a local Ray (started here with this machine's cores and GPUs): one trial
    must fit, checked before any data is tokenized or Ray starts."""
    need_cpu, need_gpu = need_of(resources)
    cpus, gpus = os.cpu_count() or 1, (local_gpus() if need_gpu else 0)
    if need_cpu > cpus or need_gpu > gpus:
        raise fail(
            "search.resources",
            resources.model_dump(),
            f"one trial needs {need_cpu:g} CPU and {need_gpu:g} GPU, this machine has {cpus} CPU "
            f"and {gpus} GPU (a local Ray gets what the machine has)",
            "lower workers / cpus_per_worker / gpus_per_worker, or run on a cluster with --address",
        )


def capacity() -> tuple[dict[str, float], bool | None]:
    """What the cluster can hold, and whether it grows: an autoscaling cluster (KubeRay, the
    cluster launcher) publishes its node groups' maximum counts, which Ray reads as the most it
    can scale to (True); a cluster launcher head that published none can grow by an unknown
    amount (None); any other cluster holds what its nodes have now (False)."""
    import ray

    have = ray.cluster_resources()
    try:
        from sft_tune.compat import max_cluster_resources

        most = max_cluster_resources()
    except Exception:  # a private part of Ray: without it, the cluster is taken as it is now
        most = None
    if most:
        return {k: max(float(most.get(k, 0)), have.get(k, 0)) for k in {*most, *have}}, True
    launcher = Path("~/ray_bootstrap_config.yaml").expanduser().exists()
    return have, None if launcher else False


def check_resources(sweep: Sweep) -> None:
    """One trial must fit what the cluster has, or can scale to."""
    need_cpu, need_gpu = trial_need(sweep)
    most, grows = capacity()
    if need_cpu <= most.get("CPU", 0) and need_gpu <= most.get("GPU", 0):
        return
    size = f"{most.get('CPU', 0):g} CPU and {most.get('GPU', 0):g} GPU"
    if grows is None:
        log.warning(
            "one trial needs %g CPU and %g GPU, the cluster has %s now; trials wait for the "
            "autoscaler to add nodes",
            need_cpu,
            need_gpu,
            size,
        )
        return
    raise fail(
        "search.resources",
        sweep.search.resources.model_dump(),
        f"one trial needs {need_cpu:g} CPU and {need_gpu:g} GPU, the cluster "
        + (f"can scale to at most {size}" if grows else f"has {size}"),
        "lower workers / cpus_per_worker / gpus_per_worker, or add nodes"
        + (" (or raise the autoscaler's max workers)" if grows else ""),
    )


def concurrency(sweep: Sweep) -> tuple[int, str | None]:
    """Trials to run at once, and what to tell the user about it: search.max_concurrent, capped
    to the trials whose workers the cluster holds (or, autoscaling, can scale to): the rest
    would only wait for CPUs, and a Train worker group that waits too long times out and errors.
    A cluster that grows by an unknown amount keeps max_concurrent, with a warning."""
    need_cpu, need_gpu = trial_need(sweep)
    most, grows = capacity()
    fits = math.floor(most.get("CPU", 0) / need_cpu + 1e-9) if need_cpu else sys.maxsize
    if need_gpu:
        fits = min(fits, math.floor(most.get("GPU", 0) / need_gpu + 1e-9))
    fits = max(fits, 1)
    wanted = sweep.search.max_concurrent
    if wanted <= fits:
        return wanted, None
    size = f"{most.get('CPU', 0):g} CPU, {most.get('GPU', 0):g} GPU"
    if grows is None:
        return wanted, (
            f"search.max_concurrent {wanted}: the cluster ({size} now) holds {fits} trial(s) at "
            "once; the others wait for the autoscaler to add nodes (and fail after "
            "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S if none come)"
        )
    held = "can scale to" if grows else "has"
    return fits, (
        f"search.max_concurrent {wanted} capped to {fits}: each trial holds {need_cpu:g} CPU "
        f"and {need_gpu:g} GPU, and the cluster {held} {size}"
    )
