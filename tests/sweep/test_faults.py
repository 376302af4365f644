"""What faults must not cost a sweep: a real local Ray, tiny models, fault hooks that hit a window
exactly (see sft_tune.sweep.faults: SFT_TUNE_FAULT_FILE, SFT_TUNE_KILL_AFTER_LAST_FOLD)."""

import json

import optuna
import pytest
from conftest import write_space
from jobs import killed_driver
from wandb_records import read_runs

from sft_tune.report import build_report
from sft_tune.sweep.folder import read_events
from sft_tune.sweep.run import run_search


@pytest.fixture
def fault_env(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return tmp_path


def _study(result, name):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{result.sweep_dir / 'study.db'}")


@pytest.mark.ray
def test_a_trial_whose_process_dies_after_its_last_fold_stays_complete(
    fault_env, tiny_bert, toy_files, monkeypatch
):
    # The trial process is SIGKILLed right after its last fold's report (checkpoint saved), with no
    # retry allowed: all its folds and its CV mean are saved, so it is COMPLETE everywhere.
    kill = fault_env / "killed"
    monkeypatch.setenv("SFT_TUNE_KILL_AFTER_LAST_FOLD", str(kill))
    space = write_space(
        fault_env, tiny_bert, toy_files, "afterlast", num_trials=1, scheduler="none", max_failures=0
    )
    result = run_search(space)
    assert kill.exists()  # the fault happened
    [trial] = result.trials
    assert trial.status.value == "COMPLETE" and trial.folds_done == 2 and trial.error is None
    assert result.best is not None and result.best["trial_id"] == trial.trial_id
    assert [t.state.name for t in _study(result, "afterlast").trials] == ["COMPLETE"]
    assert _study(result, "afterlast").trials[0].value == pytest.approx(trial.cv_mean)
    [run] = read_runs(result.sweep_dir / "wandb")
    assert run.summary["status"] == "COMPLETE" and run.exit_code == 0


@pytest.mark.ray
def test_a_failed_trial_says_which_exception_and_where_its_traceback_is(
    fault_env, tiny_bert, toy_files, monkeypatch
):
    # The first fold raises (no retry): trials.json/csv, the terminal table, the report and the
    # W&B run say `RuntimeError: injected fault ...` and point at error.txt, without colour codes.
    monkeypatch.setenv("SFT_TUNE_FAULT_FILE", str(fault_env / "fault"))
    space = write_space(
        fault_env, tiny_bert, toy_files, "failing", num_trials=1, scheduler="none", max_failures=0
    )
    result = run_search(space)
    [trial] = result.trials
    assert trial.status.value == "ERROR"
    assert trial.error.startswith("RuntimeError: injected fault (SFT_TUNE_FAULT_FILE=")
    assert "\x1b" not in trial.error and "ray::" not in trial.error
    traceback = trial.error.split("(traceback: ", 1)[1].rstrip(")")
    assert traceback.endswith("error.txt") and "injected fault" in open(traceback).read()
    [row] = json.loads((result.sweep_dir / "trials.json").read_text())
    assert row["error"] == trial.error
    assert trial.error in (result.sweep_dir / "trials.csv").read_text()
    from sft_tune.sweep.records import format_table

    assert "ERROR: RuntimeError: injected fault" in format_table(result)
    _, summary = build_report(result.sweep_dir)
    assert f"trial {trial.trial_id} ERROR: RuntimeError: injected fault" in summary
    [run] = read_runs(result.sweep_dir / "wandb")
    assert run.summary["status"] == "FAILED" and run.summary["error"] == trial.error


def _check_resumed(folder, name, trials, ended_before):
    """Resume the killed sweep; it must end with the study and summary.json in agreement, no
    RUNNING Optuna trial, no ended trial launched again and one W&B run per trial."""
    result = run_search(resume=folder)
    assert result.complete and [t.status.value for t in result.trials] == ["COMPLETE"] * trials
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'study.db'}")
    states = [t.state.name for t in study.trials]
    assert "RUNNING" not in states and states.count("COMPLETE") == trials
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["optuna_states"] == {state: states.count(state) for state in set(states)}
    events = read_events(folder / "events.jsonl")
    for trial_id in ended_before:  # never launched again
        assert sum(e["event"] == "start" and e["trial_id"] == trial_id for e in events) == 1
    ids = [run.run_id for run in read_runs(folder / "wandb")]
    assert len(ids) == len(set(ids)) == trials  # one W&B run per trial, never a second one
    return study


@pytest.mark.ray
def test_a_driver_killed_right_after_a_suggestion_leaves_no_optuna_trial_running(
    fault_env, tiny_bert, toy_files
):
    # Killed right after suggesting the 2nd trial: that Optuna trial is RUNNING in the study but
    # in no Tune state. The resumed sweep closes it (FAIL, saying why) and runs a 2nd trial.
    space = write_space(fault_env, tiny_bert, toy_files, "orphan", num_trials=2, scheduler="none")
    folder = fault_env / "sweeps" / "orphan"
    killed_driver(fault_env, space, "SFT_TUNE_KILL_DRIVER_AFTER_SUGGESTION", "2")
    study = optuna.load_study(study_name="orphan", storage=f"sqlite:///{folder / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "RUNNING"]  # the fault
    ended = {e["trial_id"] for e in read_events(folder / "events.jsonl") if e["event"] == "end"}
    study = _check_resumed(folder, "orphan", 2, ended)
    [orphan] = [t for t in study.trials if "closed_by_resume" in t.user_attrs]
    assert orphan.number == 1 and orphan.state.name == "FAIL"
    assert "killed right after suggesting it" in orphan.user_attrs["closed_by_resume"]


@pytest.mark.ray
def test_a_trial_that_ended_before_the_driver_was_killed_is_not_launched_again(
    fault_env, tiny_bert, toy_files
):
    # Killed right after the 1st trial's end was recorded (events.jsonl, Optuna) and before Tune
    # saved it: Tune's state holds it RUNNING. On resume it stays ended: no second start, no
    # second W&B run with its id.
    space = write_space(fault_env, tiny_bert, toy_files, "ended", num_trials=2, scheduler="none")
    folder = fault_env / "sweeps" / "ended"
    killed_driver(fault_env, space, "SFT_TUNE_KILL_DRIVER_AFTER_END", "1")
    ended = {e["trial_id"] for e in read_events(folder / "events.jsonl") if e["event"] == "end"}
    assert len(ended) == 1
    _check_resumed(folder, "ended", 2, ended)
