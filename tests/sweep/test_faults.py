"""What faults must not cost a sweep: a real local Ray, tiny models, fault hooks that hit a window
exactly (see sft_tune.sweep.folds: SFT_TUNE_FAULT_FILE, SFT_TUNE_KILL_AFTER_LAST_FOLD)."""

import json

import optuna
import pytest
from conftest import write_space
from wandb_records import read_runs

from sft_tune.report import build_report
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
    from sft_tune.sweep.results import format_table

    assert "ERROR: RuntimeError: injected fault" in format_table(result)
    _, summary = build_report(result.sweep_dir)
    assert f"trial {trial.trial_id} ERROR: RuntimeError: injected fault" in summary
    [run] = read_runs(result.sweep_dir / "wandb")
    assert run.summary["status"] == "FAILED" and run.summary["error"] == trial.error
