"""Every Ray and Optuna internal `sft_tune.compat` relies on is still there in the installed
versions (none of these tests starts Ray): a release that moves one fails here, not in a sweep."""

import inspect
import pickle

import optuna
import pytest

from sft_tune import compat


def _space(trial):
    trial.suggest_float("x", 0.0, 1.0)


@pytest.fixture
def search(tmp_path):
    return compat.StudySearch(
        space=_space,
        metric="score",
        mode="max",
        sampler=optuna.samplers.RandomSampler(seed=0),
        study_name="compat",
        storage_url=f"sqlite:///{tmp_path}/study.db",
    )


def test_the_study_search_reaches_its_trials_and_pickles_without_its_storage(search):
    assert set(search.suggest("t1")) == {"x"}
    assert search.is_open("t1")
    search.trial_handle("t1").set_user_attr("tune_trial_id", "t1")
    state = pickle.dumps(search)
    copy = pickle.loads(state)
    assert copy.study().study_name == "compat" and copy.is_open("t1")
    search.on_trial_complete("t1", {"score": 0.5})
    assert not search.is_open("t1")
    frozen = search.study().trials[0]
    assert frozen.state is optuna.trial.TrialState.COMPLETE
    assert frozen.user_attrs["tune_trial_id"] == "t1"


def test_a_running_trial_gets_a_handle_from_its_frozen_copy(search):
    search.suggest("t1")
    study = search.study()
    (frozen,) = study.get_trials(states=[optuna.trial.TrialState.RUNNING])
    compat.running_trial(study, frozen).set_user_attr("closed_by_resume", "why")
    assert study.trials[0].user_attrs["closed_by_resume"] == "why"


def test_a_restored_tuner_s_parts_can_be_replaced(tmp_path):
    from ray import tune

    tuner = tune.Tuner(lambda config: None, run_config=tune.RunConfig(storage_path=str(tmp_path)))
    scheduler, callbacks = tune.schedulers.FIFOScheduler(), [tune.Callback()]
    compat.replace_restored_parts(tuner, scheduler=scheduler, callbacks=callbacks)
    assert tuner._local_tuner._tune_config.scheduler is scheduler
    assert tuner._local_tuner.get_run_config().callbacks is callbacks


def test_tune_s_private_hooks_are_where_compat_reaches_for_them():
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager
    from ray.tune.experiment import Trial

    original = _ExperimentCheckpointManager.sync_up_experiment_state
    assert list(inspect.signature(original).parameters) == ["self", "save_fn", "force", "wait"]
    with compat.experiment_saves_only_when(lambda: False, lambda: None):
        assert _ExperimentCheckpointManager.sync_up_experiment_state is not original
    assert _ExperimentCheckpointManager.sync_up_experiment_state is original
    assert compat.trial_actor(Trial("fake", stub=True)) is None


def test_ray_s_private_cluster_helpers_import():
    from ray._private.state import state

    assert callable(state.get_max_resources_from_cluster_config)
    compat.local_cluster_address()  # None or an address: it must not raise
    # end_local_monitor: the node this process started, and its processes by type
    from ray._private import node, ray_constants, worker

    assert hasattr(worker, "_global_node") and ray_constants.PROCESS_TYPE_MONITOR == "monitor"
    source = inspect.getsource(node.Node.__init__)
    assert "self.head = head" in source and "self.all_processes" in source
    compat.end_local_monitor()  # no Ray started here: nothing to end, and it must not raise


def test_the_versions_it_was_written_for_are_named():
    import ray

    assert set(compat.WRITTEN_FOR) == {"ray", "optuna"}
    installed = {"ray": ray.__version__, "optuna": optuna.__version__}
    for name, version in compat.WRITTEN_FOR.items():
        assert installed[name].startswith(version.split(".")[0] + "."), (name, installed[name])


def test_a_restored_search_takes_back_a_trial_its_older_study_still_queues(tmp_path):
    """A sweep on URI storage syncs study.db when a trial ends, Tune's state every few seconds:
    after a lost driver, the study can still queue (WAITING) the trial the saved searcher had
    taken from it. The restored searcher makes it RUNNING again, and tells it when it ends."""
    import shutil

    db = tmp_path / "study.db"
    kwargs = dict(
        space=_space,
        metric="score",
        mode="max",
        sampler=optuna.samplers.RandomSampler(seed=0),
        study_name="queued",
        points_to_evaluate=[{"x": 0.25}],
    )
    search = compat.StudySearch(storage_url=f"sqlite:///{db}", **kwargs)
    shutil.copy(db, tmp_path / "before.db")  # the study as last synced: the point queued
    assert search.suggest("t1") == {"x": 0.25}
    search.save(str(tmp_path / "searcher.pkl"))
    shutil.copy(tmp_path / "before.db", db)  # the driver and its newer study are lost

    restored = compat.StudySearch(
        storage_url=f"sqlite:///{db}", **{**kwargs, "points_to_evaluate": None}
    )
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert [t.state.name for t in restored.study().trials] == ["RUNNING"]
    restored.on_trial_complete("t1", {"score": 0.5})
    (trial,) = restored.study().trials
    assert trial.state.name == "COMPLETE" and trial.params == {"x": 0.25}
