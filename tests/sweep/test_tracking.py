"""W&B records of a real sweep, read back from the offline run files (marked `ray`)."""

import logging
import sys

import pytest
from wandb_records import read_runs

from sft_tune.sweep.tracking import Wandb, step_metrics


@pytest.mark.ray
def test_every_trial_has_an_offline_run_with_the_logged_keys(finished_sweep):
    result = finished_sweep["result"]
    runs = read_runs(result.sweep_dir / "wandb")
    trial_runs = {}
    for run in runs:
        if run.history:  # the select run holds only the artifact
            trial_runs.setdefault(run.run_id, run)
    assert set(trial_runs) == {f"basic-{t.trial_id}" for t in result.trials}
    for trial in result.trials:
        run = trial_runs[f"basic-{trial.trial_id}"]
        assert run.group == "basic"
        config = {k: v for k, v in run.config.items() if not k.startswith("_")}  # W&B adds `_wandb`
        assert config == pytest.approx(
            trial.params
        )  # a plain trial samples no phase-1-only parameter
        keys = set().union(*run.history)
        assert {
            "phase1/loss",
            "phase1/lm_loss",
            "phase1/task_loss",
            "phase1/lr",
            "phase2/loss",
            "phase2/task_loss",
            "phase2/lr",
        } <= keys or trial.params["phase1.steps"] == 0
        assert {"fold/score", "fold/accuracy", "fold/macro_f1", "cv_mean", "cv_std"} <= keys
        assert run.summary["status"] == "COMPLETE" and run.exit_code == 0
        assert run.summary["cv_mean"] == pytest.approx(trial.cv_mean)
        assert run.summary["fold_scores"] == pytest.approx(trial.fold_scores)


@pytest.mark.ray
def test_best_model_artifact_is_recorded(finished_sweep):
    runs = read_runs(finished_sweep["result"].sweep_dir / "wandb")
    artifacts = [a for run in runs for a in run.artifacts]
    assert any(
        a["type"] == "model" and a["name"] == "basic-best-model" and "best" in a["aliases"]
        for a in artifacts
    )
    assert finished_sweep["selected"]["wandb_artifact"] is True


def test_step_metrics_leave_out_parts_not_computed():
    nan = float("nan")
    assert step_metrics(
        {"phase": 2, "step": 3, "loss": 0.5, "lm_loss": nan, "task_loss": 0.5, "lr": 1e-4}
    ) == {"phase2/loss": 0.5, "phase2/task_loss": 0.5, "phase2/lr": 1e-4}


def test_missing_wandb_warns_once_and_turns_itself_off(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import fails as if not installed
    with caplog.at_level(logging.WARNING):
        handle = Wandb()
        assert not handle.active and handle.init(project="p") is None
        assert handle.call("log", lambda: 1 / 0) is None
    assert caplog.text.count("W&B unavailable") == 1


def test_a_failing_wandb_call_warns_once(caplog):
    handle = Wandb()
    with caplog.at_level(logging.WARNING):
        assert handle.call("log", lambda: 1 / 0) is None
        assert handle.call("log", lambda: 2) is None  # off after the first failure
    assert caplog.text.count("W&B unavailable") == 1


def test_disabled_wandb_does_nothing():
    assert Wandb(enabled=False).init(project="p") is None


def test_per_step_rows_follow_log_every_and_keep_each_phases_last_step():
    from sft_tune.sweep.tracking import every_nth_step

    records = [{"phase": 1, "step": s} for s in range(1, 8)] + [
        {"phase": 2, "step": s} for s in range(1, 5)
    ]
    kept = [(r["phase"], r["step"]) for r in every_nth_step(records, 3)]
    assert kept == [(1, 3), (1, 6), (1, 7), (2, 3), (2, 4)]
    assert every_nth_step(records, 1) == records
