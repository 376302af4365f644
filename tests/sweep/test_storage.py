"""Sweeps whose storage is an S3 URI, on a real S3 API: moto's server on 127.0.0.1 with dummy
keys (marked `ray`). The storage is the sweep's home: Ray's state and fold checkpoints and the
sweep's own files live under URI/NAME, so `select`, `report` and `search --resume` work from the
URI alone after the machine that ran the sweep and its disk are gone. (Ray 2.60 gives trial and
checkpoint paths back without their `s3://`: finishing a stopped trial, the W&B per-step rows and
the report's loss curves all read fold checkpoints on the storage.)"""

import json
import os
import shutil

import optuna
import pytest
from conftest import arms_space, make_toy_files, write_space
from jobs import killed_driver
from pyarrow.fs import FileSelector
from s3_server import moto_s3, objects
from wandb_records import read_runs

from sft_tune.cli import main
from sft_tune.report import build_report, loss_history
from sft_tune.select import select_best
from sft_tune.sweep.folder import SweepFolder
from sft_tune.sweep.ranking import best_trial
from sft_tune.sweep.run import run_search
from sft_tune.sweep.storage import read_text

pytestmark = pytest.mark.ray

BUCKET = "sft-tune-sweeps"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with moto_s3(tmp_path_factory.mktemp("moto") / "server.log", BUCKET) as filesystem:
        yield filesystem


@pytest.fixture(scope="module")
def ray_with_s3(s3):
    """A local Ray started after the AWS settings are in the environment (its workers take the
    environment Ray starts with)."""
    import ray

    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "120")
    ray.init(num_cpus=4, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False)
    yield s3
    ray.shutdown()


def test_a_sweep_on_s3_lives_there_and_is_selected_and_reported_from_its_uri_alone(
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

    # Everything the sweep keeps is in its home on S3, the local folder was only its cache.
    home = objects(ray_with_s3, f"{BUCKET}/sweeps/arms-s3")
    for name in SweepFolder.OWN_FILES:
        assert name in home or any(path.startswith(f"{name}/") for path in home), name
    assert any(path.startswith("wandb/") and path.endswith(".wandb") for path in home)

    # The machine and its disk are gone: from a fresh folder, select and report from the URI.
    uri = f"s3://{BUCKET}/sweeps/arms-s3"
    shutil.rmtree(tmp_path / "runs")
    fresh = tmp_path / "laptop"
    fresh.mkdir()
    monkeypatch.chdir(fresh)
    assert main(["select", uri, "--no-progress"]) == 0
    manifest = json.loads(read_text(f"{uri}/best_model/MANIFEST.json"))["files"]
    home = objects(ray_with_s3, f"{BUCKET}/sweeps/arms-s3")
    assert {"config.json", "best.json", "history.jsonl"} <= set(manifest)
    for name, facts in manifest.items():  # every file the manifest lists is there, whole
        assert home[f"best_model/{name}"] == facts["bytes"]
    uploaded = json.loads(read_text(f"{uri}/best_model/best.json"))
    assert uploaded["trial_id"] == best["trial_id"] and uploaded["test"]["macro_f1"] >= 0
    shutil.rmtree(fresh / "runs")
    # As a Ray task (on a cluster: a GPU node): it uploads the model, which comes down here.
    retrained = select_best(uri, use_wandb=False, progress=False, on_ray=True)
    assert retrained["retrained_on"]["pid"] != os.getpid()
    assert (fresh / "runs/sweeps/arms-s3/best_model/config.json").is_file()
    assert json.loads(read_text(f"{uri}/best_model/MANIFEST.json"))["files"]
    shutil.rmtree(fresh / "runs")
    assert main(["report", uri]) == 0
    page = read_text(f"{uri}/report.html")
    # the report read the uploaded model's best.json: its test metrics, not "select has not run"
    assert page and best["trial_id"] in page and "has not run on this sweep" not in page


def test_a_sweep_whose_driver_and_disk_are_lost_resumes_from_its_uri_elsewhere(
    ray_with_s3, tmp_path, tiny_bert, monkeypatch
):
    """The driver is SIGKILLed right after the second trial's first fold (the first trial has
    ended; Tune saves its state on URI storage only every few seconds, so that state may not
    know the fold), and its machine's disk (the sweep's cache) and the data files' folder are
    gone: `search --resume URI --data-dir` in a fresh folder on another machine finishes the
    sweep from what is on S3. The trial that ended is not launched again, no fold runs twice
    (a restored trial goes on from its newest fold checkpoint on S3), the study agrees."""
    head = tmp_path / "head"
    head.mkdir()
    files = make_toy_files((tmp_path / "data").mkdir() or tmp_path / "data")
    space = write_space(head, tiny_bert, files, "lost", num_trials=2, scheduler="none")
    raw = space.read_text().replace(str(head / "sweeps"), f"s3://{BUCKET}/sweeps")
    space.write_text(raw)
    killed_driver(head, space, "SFT_TUNE_KILL_DRIVER_AFTER_FOLD", "3")
    uri = f"s3://{BUCKET}/sweeps/lost"
    ended = [e["trial_id"] for e in _events(uri) if e["event"] == "end"]
    assert len(ended) == 1  # synced to S3 at the trial's end, before the kill
    killed_in = {e["trial_id"] for e in _events(uri) if e["event"] == "start"} - set(ended)
    shutil.rmtree(head)
    moved = tmp_path / "moved"
    shutil.move(tmp_path / "data", moved)

    laptop = tmp_path / "laptop"
    laptop.mkdir()
    monkeypatch.chdir(laptop)
    assert main(["search", "--resume", uri, "--no-select"]) == 2  # the data is not where it was
    assert main(["search", "--resume", uri, "--data-dir", str(moved), "--no-select"]) == 0
    events = _events(uri)
    assert sum(e["event"] == "start" and e["trial_id"] == ended[0] for e in events) == 1
    folds = [(e["trial_id"], e["fold"]) for e in events if e["event"] == "fold"]
    assert len(folds) == len(set(folds))  # no fold of any trial ran twice
    cache = laptop / "runs" / "sweeps" / "lost"
    summary = json.loads(read_text(f"{uri}/summary.json"))
    assert summary["complete"] and summary["statuses"]["COMPLETE"] == 2
    trials = json.loads(read_text(f"{uri}/trials.json"))
    for row in trials:  # the interrupted trial, when Tune's state knew it, went on at fold 2
        assert sorted(f for t, f in folds if t == row["trial_id"]) == [1, 2]
    study = optuna.load_study(study_name="lost", storage=f"sqlite:///{cache / 'study.db'}")
    states = [t.state.name for t in study.trials]
    # The interrupted trial goes on when Tune's saved state knew it; else it is sampled again
    # (closed FAIL if the study on S3 already held it).
    assert states.count("COMPLETE") == 2 and "RUNNING" not in states
    assert killed_in and len(folds) >= 4
    ids = [run.run_id for run in read_runs(cache / "wandb")]
    assert len(ids) == len(set(ids))


def _events(uri: str) -> list[dict]:
    text = read_text(f"{uri}/events.jsonl") or ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]
