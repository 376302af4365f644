"""Tune's experiment state is saved at the end of a step in which a trial started, reported a
fold or ended, and at no other step (a real `_ExperimentCheckpointManager`, its storage's
syncer replaced by a recorder)."""

import os
from types import SimpleNamespace

from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

from sft_tune.sweep.tunestate import PERIOD_ENV, mark_changed, saved_when_changed


def _manager(tmp_path):
    syncer = SimpleNamespace(sync_up=lambda *a: False, wait=lambda: None)
    storage = SimpleNamespace(
        experiment_driver_staging_path=str(tmp_path),
        experiment_fs_path=str(tmp_path),
        syncer=syncer,
    )
    return _ExperimentCheckpointManager(
        storage=storage, checkpoint_period=float(os.environ[PERIOD_ENV])
    )


def test_the_state_is_saved_once_per_change_not_per_step(tmp_path, monkeypatch):
    monkeypatch.delenv(PERIOD_ENV, raising=False)
    saves = []
    with saved_when_changed(True):
        manager = _manager(tmp_path)
        manager.sync_up_experiment_state(lambda: saves.append("first step"))
        for _ in range(5):  # steps in which nothing happened
            manager.sync_up_experiment_state(lambda: saves.append("idle"))
        mark_changed()  # a fold result came in during this step
        manager.sync_up_experiment_state(lambda: saves.append("fold"))
        manager.sync_up_experiment_state(lambda: saves.append("idle"))
        manager.sync_up_experiment_state(lambda: saves.append("end"), force=True)  # Tune's last
    assert saves == ["first step", "fold", "end"]
    assert PERIOD_ENV not in os.environ  # and Tune's own method is back
    assert _ExperimentCheckpointManager.sync_up_experiment_state.__name__ == (
        "sync_up_experiment_state"
    )


def test_a_period_the_user_set_is_kept_and_uri_storage_keeps_tunes_default(tmp_path, monkeypatch):
    monkeypatch.setenv(PERIOD_ENV, "0")
    saves = []
    with saved_when_changed(True):
        manager = _manager(tmp_path)
        for _ in range(3):
            manager.sync_up_experiment_state(lambda: saves.append("step"))
    assert saves == ["step"] * 3  # the user's period 0: Tune saves at every step
    monkeypatch.delenv(PERIOD_ENV)
    with saved_when_changed(False):
        assert PERIOD_ENV not in os.environ
