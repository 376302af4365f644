"""Real local Ray sweeps on tiny models (marked `ray`)."""

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys

import optuna
import pytest
import yaml
from conftest import arms_space, toy_rows, write_csv, write_space
from wandb_records import read_runs

from sft_tune.core.prepare import PreparedData, prepare_data
from sft_tune.core.splits import make_folds
from sft_tune.errors import InputError
from sft_tune.runconfig import load_config
from sft_tune.sweep.folder import read_events
from sft_tune.sweep.run import run_search
from sft_tune.tasks import get_task

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_session")]


def test_sweep_runs_folds_retries_a_crash_and_writes_results(finished_sweep):
    result = finished_sweep["result"]
    assert result.complete and len(result.trials) == 3
    for trial in result.trials:
        assert trial.status == "COMPLETE" and trial.folds_done == 2
        assert trial.cv_mean == pytest.approx(statistics.fmean(trial.fold_scores))
        assert trial.cv_std == pytest.approx(statistics.pstdev(trial.fold_scores))
    # The injected crash happened once; that trial was retried, recorded, and still finished.
    assert finished_sweep["fault"].exists()
    assert sorted(t.attempts for t in result.trials) == [1, 1, 2]
    # Tokenized once on the driver (train + unlabelled), never in a trial, fold or worker.
    assert result.tokenization_passes == 2
    assert all(t.worker_tokenization_passes == 0 for t in result.trials)

    folder = result.sweep_dir
    assert json.loads((folder / "summary.json").read_text())["tokenization_passes"] == 2
    assert len(json.loads((folder / "trials.json").read_text())) == 3
    assert (folder / "trials.csv").read_text().count("\n") == 4
    best = json.loads((folder / "best.json").read_text())
    assert best["cv_mean"] == max(t.cv_mean for t in result.trials)
    best_config = load_config(folder / "best_config.yaml")
    assert best_config.phase1.alpha == pytest.approx(
        best["params"].get("phase1.alpha", best_config.phase1.alpha)
    )
    assert best_config.phase2.learning_rate == pytest.approx(best["params"]["phase2.learning_rate"])
    study = optuna.load_study(study_name="basic", storage=f"sqlite:///{folder / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3


def test_asha_stops_a_weak_trial_and_optuna_records_it_pruned(
    tmp_path, tiny_bert, toy_files, monkeypatch, caplog
):
    # W&B is broken here (online, no API key): the sweep must warn and go on.
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    good = {"phase2.learning_rate": 1e-2, "phase1.steps": 0, "phase2.epochs": 2}
    bad = {**good, "phase2.learning_rate": 1e-3, "phase2.epochs": 1}
    space = write_space(
        tmp_path,
        tiny_bert,
        toy_files,
        "asha",
        num_trials=2,
        folds=3,
        scheduler="asha",
        initial_points=[good, bad],
    )
    result = run_search(space)
    by_status = {t.status: t for t in result.trials}
    assert set(by_status) == {"COMPLETE", "STOPPED"}
    stopped = by_status["STOPPED"]
    assert stopped.folds_done < 3 and stopped.params["phase2.learning_rate"] == 1e-3
    # Its partial mean is below the complete trial's CV, so it is not worth finishing.
    assert stopped.cv_mean < by_status["COMPLETE"].cv_mean and not stopped.finished_after_stop
    assert result.optuna_states == {"COMPLETE": 1, "PRUNED": 1}
    study = optuna.load_study(
        study_name="asha", storage=f"sqlite:///{result.sweep_dir / 'study.db'}"
    )
    pruned = next(t for t in study.trials if t.state.name == "PRUNED")
    # PRUNED with its running fold mean as intermediate value (Optuna shows the last one as value).
    assert pruned.intermediate_values == {1: pytest.approx(stopped.cv_mean)}
    assert pruned.user_attrs["tune_trial_id"] == stopped.trial_id
    assert "W&B unavailable" in caplog.text and not list(result.sweep_dir.glob("wandb/*run-*"))


def test_one_worker_trials_run_in_one_reused_trial_actor_that_loads_the_model_once(
    tmp_path, tiny_bert, toy_files, capfd
):
    space = write_space(
        tmp_path, tiny_bert, toy_files, "reuse", num_trials=2, folds=2, scheduler="none"
    )
    result = run_search(space, use_wandb=False)
    # The terminal shows sft-tune's progress lines; Ray's and Tune's own output is in sweep.log.
    shown = capfd.readouterr()
    assert (
        "trial 1 (" in shown.err
        and "fold 2/2: macro_f1" in shown.err
        and "sweep: 2/2 trials ended (2 complete)" in shown.err
    )
    assert (
        "Trial status" not in shown.out + shown.err
        and "Configuration for experiment" not in shown.out + shown.err
    )
    log = (result.sweep_dir / "sweep.log").read_text()
    assert "Trial status" in log and "Configuration for experiment" in log
    starts = [e for e in read_events(result.sweep_dir / "events.jsonl") if e["event"] == "start"]
    assert (
        len(starts) == 2
        and len({e["trial_pid"] for e in starts}) == 1
        and starts[0]["trial_pid"] not in (None, os.getpid())
    )  # one actor served both
    assert [t.process_model_loads for t in result.trials] == [
        1,
        1,
    ]  # from_pretrained once in that process
    assert [t.status for t in result.trials] == ["COMPLETE"] * 2
    assert not (result.sweep_dir / "train").exists()  # no Ray Train run: the folds ran in the actor


def _lora_space(tmp_path, model, files, name, **search):
    """The tiny space with LoRA adapters in the base config, searching only model.adapter.r."""
    space = write_space(tmp_path, model, files, name, scheduler="none", **search)
    raw = yaml.safe_load(space.read_text())
    raw["config"]["model"]["adapter"] = {"type": "lora", "r": 4, "dropout": 0.0}
    raw["config"]["phase1"]["steps"] = 2
    raw["config"]["phase2"]["epochs"] = 1
    raw["params"] = {"model.adapter.r": {"type": "categorical", "choices": [2, 8]}}
    space.write_text(yaml.safe_dump(raw))
    return space


def test_a_sweep_over_the_lora_rank_swaps_adapters_in_one_actor_without_reloading(
    tmp_path, tiny_bert, toy_files
):
    space = _lora_space(
        tmp_path, tiny_bert, toy_files, "lora-r", num_trials=2, folds=2, sampler="grid"
    )
    result = run_search(space, use_wandb=False)
    trials = sorted(result.trials, key=lambda t: t.params["model.adapter.r"])
    assert [t.status for t in trials] == ["COMPLETE"] * 2
    assert [t.params["model.adapter.r"] for t in trials] == [2, 8]
    starts = [e for e in read_events(result.sweep_dir / "events.jsonl") if e["event"] == "start"]
    assert len({e["trial_pid"] for e in starts}) == 1  # one reused actor
    assert [t.process_model_loads for t in trials] == [1, 1]  # the base model loaded once
    # Rank 8 trains more adapter weights than rank 2; both far fewer than the model has.
    assert 0 < trials[0].trainable_parameters < trials[1].trainable_parameters
    assert all(t.process_rss_mb for t in trials)


def test_a_lora_trial_trains_with_two_ddp_workers(tmp_path, tiny_bert, toy_files):
    """DDP over adapters: only the trainable parameters (adapters, heads) are reduced."""
    space = _lora_space(
        tmp_path,
        tiny_bert,
        toy_files,
        "lora-ddp",
        num_trials=1,
        folds=2,
        resources={"workers": 2, "cpus_per_worker": 0.5},
    )
    result = run_search(space, use_wandb=False)
    [trial] = result.trials
    assert trial.status == "COMPLETE" and len(trial.fold_scores) == 2
    assert len(list((result.sweep_dir / "train").glob("train-*/checkpoint_*"))) >= 2


def test_a_space_with_both_arms_finishes_a_stopped_arm_so_the_verdict_compares_them(
    tmp_path, tiny_bert, toy_files
):
    """ASHA stops the weak two-phase trial after its first fold. It is the best (only) trial of
    its arm, so the sweep finishes it from its fold checkpoint before choosing: the verdict then
    compares a complete trial of each arm. The plain trial samples no phase-1-only parameter."""
    space = arms_space(tmp_path, tiny_bert, toy_files, "arms")
    result = run_search(space)
    by_steps = {t.params["phase1.steps"]: t for t in result.trials}
    first, finished = by_steps[0], by_steps[2]
    assert first.status == "COMPLETE" and not first.finished_after_stop
    assert (
        finished.status == "COMPLETE"
        and finished.finished_after_stop
        and finished.folds_done == 3
        and len(finished.fold_scores) == 3
    )
    summary = json.loads((result.sweep_dir / "summary.json").read_text())
    assert summary["finished_after_stop"] == [finished.trial_id]
    verdict = summary["phase1"]
    assert (
        verdict["best_plain"]["trial_id"] == first.trial_id
        and verdict["best_two_phase"]["trial_id"] == finished.trial_id
    )
    assert (
        verdict["difference"]["mean"] == pytest.approx(finished.cv_mean - first.cv_mean)
        and "finished after the scheduler stopped" in verdict["statement"]
    )
    # It went on from its checkpoint: each of its folds trained once, in two starts.
    events = read_events(result.sweep_dir / "events.jsonl")
    assert sorted(
        e["fold"] for e in events if e["event"] == "fold" and e["trial_id"] == finished.trial_id
    ) == [1, 2, 3]
    assert finished.attempts == 2
    study = optuna.load_study(
        study_name="arms", storage=f"sqlite:///{result.sweep_dir / 'study.db'}"
    )

    def of(trial):
        return [t for t in study.trials if t.user_attrs.get("tune_trial_id") == trial.trial_id]

    assert set(of(first)[0].params) == {
        "phase1.steps",
        "phase2.epochs",
        "phase2.learning_rate",
    }  # no alpha, no phase-1 lr
    assert {"phase1.alpha", "phase1.learning_rate"} <= set(of(finished)[0].params)
    states = {t.state.name: t for t in of(finished)}  # PRUNED as searched, COMPLETE as finished
    assert set(states) == {"PRUNED", "COMPLETE"} and states["COMPLETE"].value == pytest.approx(
        finished.cv_mean
    )
    # One W&B run for the finished trial, holding all three folds.
    runs = [
        run
        for run in read_runs(result.sweep_dir / "wandb")
        if run.run_id == f"arms-{finished.trial_id}"
    ]
    assert len(runs) == 1 and sorted(h["fold"] for h in runs[0].history if "fold/score" in h) == [
        1,
        2,
        3,
    ]
    assert (
        runs[0].summary["status"] == "COMPLETE" and runs[0].summary["finished_after_stop"] is True
    )


@pytest.mark.parametrize("workers", [1, 2], ids=["in-actor", "ddp"])
def test_killed_sweep_resumes_without_rerunning_finished_trials(
    tmp_path, tiny_bert, toy_files, workers
):
    space = write_space(
        tmp_path,
        tiny_bert,
        toy_files,
        "resume",
        num_trials=2,
        scheduler="none",
        resources={"workers": workers, "cpus_per_worker": 1 / workers},
    )
    folder = tmp_path / "sweeps" / "resume"
    # The driver kills itself (SIGKILL) right after it logs the 3rd fold in events.jsonl: the
    # first trial has ended, the second is running its first fold. The sweep's own event, no
    # polling and no sleeps.
    env = {**os.environ, "RAY_ADDRESS": "", "SFT_TUNE_KILL_DRIVER_AFTER_FOLD": "3"}
    driver = subprocess.Popen(
        [sys.executable, "-m", "sft_tune", "search", "--space", str(space)],
        cwd=tmp_path,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert driver.wait(timeout=600) == -signal.SIGKILL, "the driver was not killed by the hook"
    finally:
        try:  # the driver's own Ray processes share its process group
            os.killpg(driver.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    finished_before = {
        e["trial_id"]
        for e in read_events(folder / "events.jsonl")
        if e["event"] == "fold" and e["fold"] == 2
    }
    assert finished_before

    # Resumed from where it was moved to (another disk, a copied run): it keeps running there.
    moved = tmp_path / "elsewhere" / "resume"
    moved.parent.mkdir()
    shutil.move(folder, moved)
    renamed = tmp_path / "elsewhere" / "renamed"
    shutil.copytree(moved, renamed)
    with pytest.raises(InputError, match="rename the folder back"):
        run_search(resume=renamed)
    folder = moved
    result = run_search(resume=folder)
    assert (
        result.complete
        and result.sweep_dir == folder
        and [t.status for t in result.trials] == ["COMPLETE"] * 2
    )
    assert not (tmp_path / "sweeps" / "resume").exists()
    events = read_events(folder / "events.jsonl")
    folds = [(e["trial_id"], e["fold"]) for e in events if e["event"] == "fold"]
    assert len(folds) == len(set(folds)) == 4  # no fold of any trial ran twice
    for trial_id in finished_before:  # finished trials were not started again
        assert sum(e["event"] == "start" and e["trial_id"] == trial_id for e in events) == 1
    study = optuna.load_study(study_name="resume", storage=f"sqlite:///{folder / 'study.db'}")
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == 2


def test_a_trial_trains_with_two_ddp_workers_through_ray_train_and_is_retried(
    tmp_path, tiny_bert, toy_files, monkeypatch
):
    # A crash in the first fold: the trial is retried (a new TorchTrainer run) and still finishes.
    monkeypatch.setenv("SFT_TUNE_FAULT_FILE", str(tmp_path / "fault-injected"))
    space = write_space(
        tmp_path,
        tiny_bert,
        toy_files,
        "ddp",
        num_trials=1,
        scheduler="none",
        max_failures=1,
        resources={"workers": 2, "cpus_per_worker": 0.5},
    )
    # The DDP-specific paths of the options: LM-head warm-up (head gradients averaged by hand),
    # gradient accumulation (no_sync until the last micro-batch), early stopping (every rank
    # scores the same inner validation split and stops at the same epoch).
    raw = yaml.safe_load(space.read_text())
    raw["config"]["phase1"].update(steps=4, head_warmup_steps=2, accumulation_steps=2)
    raw["config"]["phase2"].update(accumulation_steps=2, early_stopping_patience=1, epochs=3)
    raw["config"]["data"]["validation_fraction"] = 0.2
    raw["params"].pop("phase2.epochs"), raw["params"].pop("phase1.steps")
    space.write_text(yaml.safe_dump(raw))
    result = run_search(space, use_wandb=False)
    [trial] = result.trials
    assert trial.status == "COMPLETE" and len(trial.fold_scores) == 2 and trial.attempts == 2
    assert (tmp_path / "fault-injected").exists()
    # The folds ran in a Ray Train worker group: its run folder holds the fold checkpoints.
    assert len(list((result.sweep_dir / "train").glob("train-*/checkpoint_*"))) >= 2
    assert trial.checkpoint and "/train/train-" in trial.checkpoint


@pytest.mark.parametrize("repeats", [1, 3])
def test_fold_lm_data_never_contains_that_folds_validation_texts(
    tmp_path, tiny_bert, toy_files, repeats
):
    """Also with repeated k-fold: R x k distinct folds, each repeat a partition of the labelled
    set, and the LM-data rule kept per fold."""
    rows = toy_rows(40, seed=9)
    files = {**toy_files, "train": write_csv(tmp_path / "train.csv", rows)}
    # The unlabelled pool also holds copies of labelled texts: they must be dropped for their fold.
    pool = [{"text": r["text"]} for r in rows[::3]] + [{"text": "the road was plain"}]
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pool))
    space = write_space(
        tmp_path, tiny_bert, {**files, "unlabelled": tmp_path / "pool.jsonl"}, "leak", folds=4
    )
    from sft_tune.sweep.checks import load_space

    sweep = load_space(space)
    data: PreparedData = prepare_data(
        sweep.base_config, get_task("classification"), 4, 0, repeats=repeats
    )
    assert len(data.splits) == 4 * repeats
    assert len({tuple(held) for _, held in data.splits}) == 4 * repeats  # all distinct
    for fold, (train, held) in enumerate(data.splits):
        held_ids = {tuple(data.labelled.input_ids[i]) for i in held}
        lm = {tuple(ids) for ids in data.lm_ids(fold, include_labelled=True)}
        assert not lm & held_ids
        assert {tuple(data.labelled.input_ids[i]) for i in train} <= lm
    for repeat in range(repeats):
        folds = data.splits[4 * repeat : 4 * (repeat + 1)]
        assert sorted(i for _, held in folds for i in held) == list(range(40))
    # repeat 0 is the unrepeated split
    assert (
        data.splits[:4] == prepare_data(sweep.base_config, get_task("classification"), 4, 0).splits
    )


def test_a_repeated_kfold_trial_runs_every_fold_of_every_repeat(tmp_path, tiny_bert, toy_files):
    space = write_space(
        tmp_path,
        tiny_bert,
        toy_files,
        "repeats",
        num_trials=1,
        folds=2,
        repeats=2,
        scheduler="none",
    )
    result = run_search(space)
    (trial,) = result.trials
    assert trial.status == "COMPLETE" and trial.folds_done == 4 and len(trial.fold_scores) == 4
    assert trial.seconds_per_fold > 0
    events = read_events(result.sweep_dir / "events.jsonl")
    assert [e["fold"] for e in events if e["event"] == "fold"] == [1, 2, 3, 4]


def test_shared_sweep_data_is_mapped_not_copied_by_workers(
    ray_session, tmp_path, tiny_bert, toy_files
):
    """The tokenized pool reaches a worker as a read-only view of the object store (zero-copy),
    so N concurrent trials hold one copy of it, not N."""
    import ray

    from sft_tune.sweep.checks import load_space

    data = prepare_data(
        load_space(write_space(tmp_path, tiny_bert, toy_files, "share")).base_config,
        get_task("classification"),
        2,
        0,
    )
    ref = ray.put(data)

    @ray.remote(num_cpus=0.01)
    def probe(wrapped):
        got = wrapped[0] if isinstance(wrapped, list) else wrapped
        got = ray.get(got) if isinstance(got, ray.ObjectRef) else got
        lm = got.lm_ids(0, include_labelled=True)
        return (
            got.unlabelled.flat.flags.writeable,
            got.unlabelled.flat.nbytes,
            len(lm),
            [int(t) for t in lm[0]],
        )

    writeable, nbytes, n_lm, first = ray.get(probe.remote([ref]))
    assert not writeable and nbytes == data.unlabelled.flat.nbytes
    assert (
        n_lm == len(data.lm_ids(0, include_labelled=True))
        and first == data.lm_ids(0, True)[0].tolist()
    )


def test_concurrency_is_capped_to_what_the_cluster_holds_or_can_scale_to(
    ray_session, tmp_path, tiny_bert, toy_files
):
    """On a fixed-size Ray, run only as many trials at once as their workers' CPUs fit (more would
    only wait, and a Train worker group that waits too long times out and errors). An autoscaling
    cluster publishes its node groups' maximum counts (as KubeRay and the cluster launcher do, in
    the GCS's autoscaler state): there the cap is what it can scale to, and a trial too big for
    the nodes it has now but not for the maximum is accepted."""
    import ray
    from ray.core.generated import autoscaler_pb2
    from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_put

    from sft_tune.errors import InputError
    from sft_tune.sweep.checks import load_space
    from sft_tune.sweep.cluster import check_resources, concurrency

    def sweep_with(max_concurrent, cpus_per_worker, gpus=0):
        path = write_space(
            tmp_path,
            tiny_bert,
            toy_files,
            f"cap-{max_concurrent}-{cpus_per_worker}-{gpus}",
            max_concurrent=max_concurrent,
            resources={"workers": 1, "cpus_per_worker": cpus_per_worker, "gpus_per_worker": gpus},
        )
        return load_space(path)

    # the module's Ray declares 4 CPUs; a 1-worker trial holds exactly its worker's CPUs
    assert concurrency(sweep_with(3, 1)) == (3, None)
    count, message = concurrency(sweep_with(5, 1))
    assert count == 4 and "max_concurrent 5 capped to 4" in message and "has 4 CPU" in message
    assert concurrency(sweep_with(3, 2))[0] == 2
    with pytest.raises(InputError, match="the cluster has 4 CPU and 0 GPU"):
        check_resources(sweep_with(1, 1, gpus=1))

    # An autoscaling cluster: a GPU group of up to 3 nodes with 1 GPU and 8 CPUs each.
    config = autoscaler_pb2.ClusterConfig(
        node_group_configs=[
            autoscaler_pb2.NodeGroupConfig(
                name="gpu", resources={"CPU": 8, "GPU": 1}, min_count=0, max_count=3
            )
        ]
    )
    key = ray._raylet.GCS_AUTOSCALER_CLUSTER_CONFIG_KEY.encode()
    namespace = ray._raylet.GCS_AUTOSCALER_STATE_NAMESPACE.encode()
    _internal_kv_put(key, config.SerializeToString(), namespace=namespace)
    try:
        check_resources(sweep_with(1, 1, gpus=1))  # no GPU now, up to 3 later: accepted
        count, message = concurrency(sweep_with(5, 1, gpus=1))
        assert count == 3 and "can scale to 24 CPU, 3 GPU" in message
        with pytest.raises(InputError, match="can scale to at most 24 CPU and 3 GPU"):
            check_resources(sweep_with(1, 1, gpus=4))
    finally:
        _internal_kv_del(key, namespace=namespace)


def test_folds_are_stratified(tmp_path):
    strata = ["a"] * 30 + ["b"] * 10
    folds = make_folds(strata, None, 5, seed=0, path=tmp_path / "t.csv")
    for _, held in folds:
        assert [strata[i] for i in held].count("b") == 2


def _space_searching(tmp_path, tiny_bert, files, name, params, points, **search):
    """search_spaces/tiny.yaml with these searched params and initial points."""
    space = write_space(
        tmp_path,
        tiny_bert,
        files,
        name,
        num_trials=len(points),
        folds=2,
        scheduler="none",
        initial_points=points,
        **search,
    )
    raw = yaml.safe_load(space.read_text())
    raw["params"] = params
    space.write_text(yaml.safe_dump(raw))
    return space


def _digest(sweep, section: str, **changes) -> str:
    """The digest of the encoding `encode_data` makes of the sweep's data (its 2 folds, LM texts)
    for the base config with `changes` in `section` (what a trial with those values trains on)."""
    from sft_tune.core.files import read_data
    from sft_tune.core.prepare import encode_data, split_data

    base, task = sweep.base_config, get_task("classification")
    config = base.model_copy(update={section: getattr(base, section).model_copy(update=changes)})
    raw = read_data(base, task, lm=True)
    splits = split_data(base, task, raw, 2, sweep.search.seed)
    return encode_data(config, task, raw, splits, lm=True).digest


def test_a_searched_max_length_is_honoured_per_trial_and_encoded_once_per_value(
    tmp_path, tiny_bert, toy_files
):
    """data.max_length over [8, 32]: each trial trains on the encoding of its own value (the
    sweep encoded once from the base config, so every trial trained on 32), and the sweep encodes
    each value once however many trials sample it: labelled + LM texts, 2 passes a value."""
    from sft_tune.sweep.checks import load_space

    params = {
        "data.max_length": {"type": "categorical", "choices": [8, 32]},
        "phase2.learning_rate": {"type": "categorical", "choices": [0.003, 0.01]},
    }
    points = [
        {"data.max_length": 8, "phase2.learning_rate": 0.01},
        {"data.max_length": 32, "phase2.learning_rate": 0.01},
        {"data.max_length": 8, "phase2.learning_rate": 0.003},
    ]
    space = _space_searching(tmp_path, tiny_bert, toy_files, "lengths", params, points)
    result = run_search(space, use_wandb=False)
    assert [t.status for t in result.trials] == ["COMPLETE"] * 3
    by_length = {}
    for trial in result.trials:
        by_length.setdefault(trial.params["data.max_length"], set()).add(trial.encoding)
    assert len(by_length[8]) == 1 and by_length[8] != by_length[32]
    sweep = load_space(space)
    for length, digests in by_length.items():
        assert digests == {_digest(sweep, "data", max_length=length)}
    summary = json.loads((result.sweep_dir / "summary.json").read_text())
    assert summary["encodings"] == 2 and summary["tokenization_passes"] == 4
    assert all(t.worker_tokenization_passes == 0 for t in result.trials)


def test_the_encoding_store_encodes_each_key_once_and_maps_it_everywhere(
    ray_session, tmp_path, tiny_bert, toy_files
):
    import ray

    from sft_tune.core.files import read_data
    from sft_tune.sweep.checks import load_space
    from sft_tune.sweep.encodings import SharedData, start_store

    sweep = load_space(write_space(tmp_path, tiny_bert, toy_files, "store"))
    task = get_task("classification")
    raw = read_data(sweep.base_config, task, lm=True)
    base = prepare_data(sweep.base_config, task, 2, 0, lm=True, raw=raw)
    refs = {base.key: [ray.put(base)]}
    shared = SharedData(refs, start_store(raw, refs[base.key][0], refs))
    short = sweep.base_config.model_copy(
        update={"data": sweep.base_config.data.model_copy(update={"max_length": 8})}
    )
    assert shared.ref(sweep.base_config, task) == refs[base.key][0]
    first, again = shared.ref(short, task), shared.ref(short, task)
    assert first == again and first != refs[base.key][0]
    data = ray.get(first)
    assert data.splits == base.splits and data.key != base.key
    assert max(len(data.unlabelled[i]) for i in range(len(data.unlabelled))) <= 8
    assert max(len(ids) for ids in data.labelled.input_ids) <= 8
    assert not data.unlabelled.flat.flags.writeable  # mapped from the object store
    stats = ray.get(shared.store.stats.remote())
    assert len(stats["encodings"]) == 1 and stats["tokenization_passes"] == 2


def test_a_sweep_searches_two_checkpoints_with_different_vocabularies(
    tmp_path, tiny_bert, toy_files
):
    """Each trial loads its own checkpoint and trains on token ids of its own tokenizer (the
    sweep fed every trial the base tokenizer's ids). Both checkpoints are encoded before Ray
    starts (a tokenizer that cannot read the data is refused there)."""
    from tiny import save_tiny_bert, toy_vocabulary

    from sft_tune.sweep.checks import load_space

    vocab = toy_vocabulary()  # specials, the toy words, a-z, punctuation
    letters = set("abcdefghijklmnopqrstuvwxyz")
    # Other ids for the same words, and a smaller vocabulary (no single letters).
    other = save_tiny_bert(
        tmp_path / "other-bert",
        vocab[:5] + sorted((w for w in vocab[5:] if w not in letters), reverse=True),
    )
    params = {
        "model.name_or_path": {"type": "categorical", "choices": [str(tiny_bert), "other-bert"]}
    }
    points = [{"model.name_or_path": str(tiny_bert)}, {"model.name_or_path": "other-bert"}]
    space = _space_searching(tmp_path, tiny_bert, toy_files, "models", params, points)
    raw = yaml.safe_load(space.read_text())
    raw["base"] = None
    space.write_text(yaml.safe_dump(raw))  # "other-bert" is relative to the space's folder
    result = run_search(space, use_wandb=False)
    assert [t.status for t in result.trials] == ["COMPLETE", "COMPLETE"]
    sweep = load_space(space)
    assert sweep.params["model.name_or_path"].choices == [str(tiny_bert), str(other)]
    for trial in result.trials:
        path = trial.params["model.name_or_path"]
        assert trial.encoding == _digest(sweep, "model", name_or_path=path)
    assert result.trials[0].encoding != result.trials[1].encoding
    summary = json.loads((result.sweep_dir / "summary.json").read_text())
    assert summary["encodings"] == 2


def test_a_diverging_trial_ends_diverged_is_failed_in_the_study_and_never_chosen(
    tmp_path, tiny_bert, toy_files
):
    """A learning rate of 1 without clipping makes the loss NaN within a few steps: that trial
    ends DIVERGED after its first fold (not trained on), FAIL in the study, and the best is the
    finite trial."""
    params = {
        "phase2.learning_rate": {"type": "categorical", "choices": [0.01, 1.0]},
        "optimizer.beta2": {"type": "categorical", "choices": [0.0, 0.999]},
    }
    points = [
        {"phase2.learning_rate": 1.0, "optimizer.beta2": 0.0},
        {"phase2.learning_rate": 0.01, "optimizer.beta2": 0.999},
    ]
    space = _space_searching(tmp_path, tiny_bert, toy_files, "diverge", params, points)
    raw = yaml.safe_load(space.read_text())
    raw["config"]["phase1"]["steps"] = 0
    raw["config"]["phase2"]["epochs"] = 3
    raw["config"]["optimizer"].update(max_grad_norm=0.0, eps=1e-30)
    space.write_text(yaml.safe_dump(raw))
    result = run_search(space)
    by_lr = {t.params["phase2.learning_rate"]: t for t in result.trials}
    diverged, finite = by_lr[1.0], by_lr[0.01]
    assert diverged.status == "DIVERGED" and diverged.folds_done == 1
    assert diverged.diverged_at.startswith("phase 2 step")
    assert finite.status == "COMPLETE"
    best = json.loads((result.sweep_dir / "best.json").read_text())
    assert best["trial_id"] == finite.trial_id
    study = optuna.load_study(
        study_name="diverge", storage=f"sqlite:///{result.sweep_dir / 'study.db'}"
    )
    states = {t.user_attrs["tune_trial_id"]: t for t in study.trials}
    assert states[diverged.trial_id].state.name == "FAIL"
    assert states[diverged.trial_id].user_attrs["diverged"] == diverged.diverged_at
    rows = {r["trial_id"]: r for r in json.loads((result.sweep_dir / "trials.json").read_text())}
    assert rows[diverged.trial_id]["status"] == "DIVERGED"
    runs = {run.summary.get("status") for run in read_runs(result.sweep_dir / "wandb")}
    assert "DIVERGED" in runs
