"""Sweeps whose storage is an S3 URI, on a real S3 API: moto's server on 127.0.0.1 with dummy
keys (marked `ray`). Ray 2.60 gives trial and checkpoint paths back without their `s3://`:
finishing a stopped trial, the W&B per-step rows and the report's loss curves all read fold
checkpoints on the storage."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from conftest import arms_space
from pyarrow.fs import FileSelector
from wandb_records import read_runs

from sft_tune.report import build_report, loss_history
from sft_tune.sweep.folder import SweepFolder
from sft_tune.sweep.results import best_trial
from sft_tune.sweep.run import run_search

pytestmark = pytest.mark.ray

BUCKET = "sft-tune-sweeps"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on 127.0.0.1 (stopped by its PID), the AWS settings every process reads
    (pyarrow reads AWS_ENDPOINT_URL), and one bucket."""
    import pyarrow.fs

    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"moto's server did not start: {log.read_text()}") from None
                time.sleep(0.2)
        filesystem = pyarrow.fs.S3FileSystem(
            endpoint_override=endpoint, scheme="http", allow_bucket_creation=True
        )
        filesystem.create_dir(BUCKET)
        yield filesystem
    finally:
        server.terminate()
        server.wait(timeout=30)
        for key, value in saved.items():
            os.environ.pop(key, None)
            if value is not None:
                os.environ[key] = value


@pytest.fixture(scope="module")
def ray_with_s3(s3):
    """A local Ray started after the AWS settings are in the environment (its workers take the
    environment Ray starts with)."""
    import ray

    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "120")
    ray.init(num_cpus=4, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False)
    yield s3
    ray.shutdown()


def test_a_sweep_on_s3_finishes_a_stopped_trial_from_its_checkpoint_and_logs_its_steps(
    ray_with_s3, tmp_path, tiny_bert, toy_files, monkeypatch
):
    """The arms sweep on S3 storage: ASHA stops the weak two-phase trial, which is then finished
    from its fold checkpoint on S3 (it failed: "URI has empty scheme"); its W&B run holds the
    per-step loss rows read from those checkpoints, and the report draws the loss curves."""
    monkeypatch.chdir(tmp_path)  # the sweep's own files go to ./runs/sweeps/NAME
    space = arms_space(tmp_path, tiny_bert, toy_files, "arms-s3")
    raw = space.read_text().replace(str(tmp_path / "sweeps"), f"s3://{BUCKET}/sweeps")
    space.write_text(raw)
    result = run_search(space)
    by_steps = {t.params["phase1.steps"]: t for t in result.trials}
    finished = by_steps[2]
    assert by_steps[0].status == "COMPLETE"
    assert finished.status == "COMPLETE" and finished.finished_after_stop
    assert finished.checkpoint.startswith(f"s3://{BUCKET}/sweeps/arms-s3/")
    stored = ray_with_s3.get_file_info(FileSelector(f"{BUCKET}/sweeps/arms-s3", recursive=True))
    assert any(info.path.endswith("/folds.json") for info in stored)

    runs = {run.run_id: run for run in read_runs(result.sweep_dir / "wandb")}
    steps = [h for h in runs[f"arms-s3-{finished.trial_id}"].history if "phase2/loss" in h]
    assert steps  # per-step rows, read from the fold checkpoints on S3
    assert sorted(
        h["fold"] for h in runs[f"arms-s3-{finished.trial_id}"].history if "fold/score" in h
    ) == [1, 2, 3]

    # The report's loss curves of the best trial (no select yet): its last fold checkpoint, on S3.
    folder = SweepFolder(result.sweep_dir)
    best = best_trial(folder.load_sweep(), result.trials)
    history, source = loss_history(folder, result.trials, best, None)
    assert history and {h["phase"] for h in history} >= {2} and "last fold" in source
    build_report(result.sweep_dir)
    assert json.loads((result.sweep_dir / "summary.json").read_text())["finished_after_stop"] == [
        finished.trial_id
    ]
