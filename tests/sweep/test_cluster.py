"""Where a sweep's Ray comes from: a private local instance unless an address is given."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_space

from sft_tune.sweep.cluster import stop_ray
from sft_tune.sweep.run import run_search

RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.ray
def test_a_sweep_without_address_runs_on_its_own_ray_beside_a_ray_start_cluster(
    tmp_path, tiny_bert, toy_files, caplog
):
    # A `ray start` head with the default temp dir: the cluster a bare `ray.init()` attaches to
    # (and then refuses num_cpus with a ValueError). The sweep must start its own instance.
    from ray._common.utils import get_ray_address_file
    from ray._private.services import find_gcs_addresses

    address_file = Path(get_ray_address_file(None))
    before = address_file.read_text() if address_file.exists() else None
    port = _free_port()
    env = {**os.environ, "RAY_ADDRESS": ""}
    log = (tmp_path / "head.log").open("w")
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", f"--port={port}", "--num-cpus=1"]
        + ["--include-dashboard=false", "--disable-usage-stats"],
        env=env,
        start_new_session=True,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            written = address_file.read_text() if address_file.exists() else ""
            if written.endswith(f":{port}") and written in set(find_gcs_addresses()):
                break
            assert head.poll() is None, (tmp_path / "head.log").read_text()
            time.sleep(0.5)
        else:
            pytest.fail("the ray start head did not come up")
        from sft_tune.addresses import probe_address

        probe_address("--address", f"127.0.0.1:{port}")  # its GCS answers the HTTP/2 probe
        space = write_space(tmp_path, tiny_bert, toy_files, "beside", num_trials=1, folds=2)
        result = run_search(space, use_wandb=False)
        assert result.complete and [t.status for t in result.trials] == ["COMPLETE"]
        said = [r.getMessage() for r in caplog.records if r.name == "sft_tune.sweep.cluster"]
        assert any("starts its own local Ray instance" in m and f":{port}" in m for m in said)
        # Attached to the cluster, stop_ray only disconnects: the cluster's processes go on.
        import ray

        ray.init(address=f"127.0.0.1:{port}", log_to_driver=False)
        stop_ray()
        assert head.poll() is None and written in set(find_gcs_addresses())
    finally:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
        log.close()
        if before is None:
            address_file.unlink(missing_ok=True)
        else:
            address_file.write_text(before)


@pytest.mark.ray
def test_stop_ray_ends_every_process_of_the_local_ray_this_process_started():
    import ray
    from ray._private import ray_constants, worker

    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        started = [i.process for infos in worker._global_node.all_processes.values() for i in infos]
        (monitor,) = worker._global_node.all_processes[ray_constants.PROCESS_TYPE_MONITOR]
        assert monitor.process.poll() is None
        from sft_tune.compat import end_local_monitor

        end_local_monitor()  # the autoscaler monitor first: the rest of Ray goes on without it
        assert monitor.process.poll() is not None
        assert ray.get(ray.remote(lambda: 41 + 1).remote()) == 42
    finally:
        stop_ray()
    assert not ray.is_initialized()
    assert started and all(p.poll() is not None for p in started)
