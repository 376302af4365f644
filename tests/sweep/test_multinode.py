"""Sweeps on a real multi-node Ray cluster with S3 storage, all on this machine (marked
`multinode`): a head with no CPU, so every trial runs on a worker node; worker nodes that cannot
see the driver's sweep folder (their own mount namespace, see `ray_nodes`); moto's S3 server on
127.0.0.1 as the storage. What must hold: nothing a trial does depends on the driver's disk, a
node lost mid-fold costs only that fold, a DDP trial spans nodes, and once the cluster and the
driver's disk are gone the sweep is selected, reported and resumed from its URI alone; select's
retrain runs as a Ray task on a worker node."""

import json
import shutil
import threading
import time

import pytest
import ray
import yaml
from conftest import arms_space, write_space
from ray_nodes import Nodes
from s3_server import moto_s3, objects
from wandb_records import read_runs

from sft_tune.cli import main
from sft_tune.select import select_best
from sft_tune.sweep.run import run_search
from sft_tune.sweep.storage import read_text

pytestmark = [pytest.mark.ray, pytest.mark.multinode]

BUCKET = "sft-tune-cluster"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with moto_s3(tmp_path_factory.mktemp("moto") / "server.log", BUCKET) as filesystem:
        yield filesystem


@pytest.fixture
def driver(tmp_path, monkeypatch):
    """The driver's working folder (its sweep cache goes to ./runs/sweeps/NAME), which the
    worker nodes cannot see."""
    folder = tmp_path / "driver"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "120")
    return folder


@pytest.fixture
def nodes(s3, driver, tmp_path):
    """A head with no CPU (this process is its driver); the test adds the worker nodes."""
    logs = tmp_path / "nodes"
    logs.mkdir()
    cluster = Nodes(hidden=driver, logs=logs)
    yield cluster
    cluster.shutdown()


def _on_s3(space, folder):
    space.write_text(space.read_text().replace(str(folder / "sweeps"), f"s3://{BUCKET}/sweeps"))
    return space


def _events(uri):
    text = read_text(f"{uri}/events.jsonl") or ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _kill_after_first_fold(nodes, node, events_path, killed):
    """Watch the driver's events.jsonl; at the first fold result, SIGKILL the node (the trial
    is then in its second fold) and start a fresh one."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if events_path.is_file() and '"event": "fold"' in events_path.read_text():
            first = next(
                json.loads(line)
                for line in events_path.read_text().splitlines()
                if '"event": "fold"' in line
            )
            nodes.kill(node)
            killed.update(first)
            nodes.add(cpus=2)
            return
        time.sleep(0.2)


def test_a_sweep_on_two_nodes_survives_a_lost_node_and_lives_on_after_the_cluster(
    nodes, driver, tmp_path, tiny_bert, toy_files, s3, monkeypatch
):
    """The arms sweep (ASHA stops the weak two-phase trial, which is then finished) on a worker
    node that is SIGKILLed after the first fold; a fresh node joins and the trial goes on from
    its fold checkpoint on S3. Then the cluster and the driver's disk are deleted, and select,
    report and --resume run from the URI in a fresh folder."""
    first = nodes.add(cpus=2)
    space = _on_s3(arms_space(tmp_path, tiny_bert, toy_files, "nodes"), tmp_path)
    raw = yaml.safe_load(space.read_text())
    raw["search"]["max_failures"] = 2
    space.write_text(yaml.safe_dump(raw))
    uri = f"s3://{BUCKET}/sweeps/nodes"

    killed: dict = {}
    events_path = driver / "runs" / "sweeps" / "nodes" / "events.jsonl"
    watcher = threading.Thread(
        target=_kill_after_first_fold, args=(nodes, first, events_path, killed), daemon=True
    )
    watcher.start()
    result = run_search(space)
    watcher.join(timeout=120)
    assert killed, "the node was never killed"

    by_steps = {t.params["phase1.steps"]: t for t in result.trials}
    assert [t.status for t in result.trials] == ["COMPLETE", "COMPLETE"]
    assert by_steps[2].finished_after_stop  # stopped by ASHA, finished from its S3 checkpoint
    hit = next(t for t in result.trials if t.trial_id == killed["trial_id"])
    assert hit.attempts == 2 and hit.folds_done == 3

    events = _events(uri)  # what the driver copied to S3
    folds = [(e["trial_id"], e["fold"]) for e in events if e["event"] == "fold"]
    assert len(folds) == len(set(folds)) == 6  # nothing lost, nothing ran twice
    node_of = {
        e["fold"]: e["nodes"]
        for e in events
        if e["event"] == "fold" and e["trial_id"] == hit.trial_id
    }
    assert node_of[1] == killed["nodes"] and node_of[2] != node_of[1]  # fold 2 on the new node
    starts = [e for e in events if e["event"] == "start"]
    assert all(e["trial_pid"] for e in starts)  # the driver asked each trial actor for its PID

    runs = {run.run_id: run for run in read_runs(result.sweep_dir / "wandb")}
    finished = by_steps[2].trial_id
    assert any("phase2/loss" in row for row in runs[f"nodes-{finished}"].history)

    # select's retrain as a Ray task lands on a worker node (the head has no CPU; on a real
    # cluster: a GPU node), which uploads the model to S3; it comes down into the driver's cache.
    head = ray.get_runtime_context().get_node_id()
    retrained = select_best(uri, use_wandb=False, progress=False, on_ray=True)
    assert retrained["retrained_on"]["node"] != head
    assert (driver / "runs/sweeps/nodes/best_model/config.json").is_file()
    assert json.loads(read_text(f"{uri}/best_model/best.json"))["trial_id"] == retrained["trial_id"]

    # The cluster and the driver's disk are gone; a fresh folder on another machine.
    nodes.shutdown()
    shutil.rmtree(driver / "runs")
    laptop = tmp_path / "laptop"
    laptop.mkdir()
    monkeypatch.chdir(laptop)
    assert main(["select", uri, "--no-progress", "--no-wandb"]) == 0
    assert json.loads(read_text(f"{uri}/best_model/MANIFEST.json"))["files"]
    assert main(["report", uri]) == 0
    assert "has not run on this sweep" not in read_text(f"{uri}/report.html")
    before = len(_events(uri))
    assert main(["search", "--resume", uri, "--no-select"]) == 0  # a finished sweep: no trial runs
    assert not [e for e in _events(uri)[before:] if e["event"] in ("start", "fold")]
    summary = json.loads(read_text(f"{uri}/summary.json"))
    assert summary["complete"], json.dumps(summary)


def test_a_ddp_trial_spans_two_nodes(nodes, driver, tmp_path, tiny_bert, toy_files, s3):
    """Two 1-CPU worker nodes, a trial with 2 DDP workers of 1 CPU: Ray Train places one rank on
    each node (gloo between them); its fold checkpoints are Train checkpoints on S3."""
    nodes.add(cpus=1)
    nodes.add(cpus=1)
    space = write_space(
        tmp_path,
        tiny_bert,
        toy_files,
        "ddp-nodes",
        num_trials=1,
        scheduler="none",
        resources={"workers": 2, "cpus_per_worker": 1},
    )
    result = run_search(_on_s3(space, tmp_path), use_wandb=False)
    [trial] = result.trials
    assert trial.status == "COMPLETE" and trial.folds_done == 2
    uri = f"s3://{BUCKET}/sweeps/ddp-nodes"
    for event in (e for e in _events(uri) if e["event"] == "fold"):
        assert len(event["nodes"]) == 2 and len(set(event["nodes"])) == 2  # a rank on each node
    stored = objects(s3, f"{BUCKET}/sweeps/ddp-nodes")
    assert any(p.startswith("train/train-") and p.endswith("/folds.json") for p in stored)
    assert trial.checkpoint.startswith(f"{uri}/train/train-")
