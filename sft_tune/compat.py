"""Ray's and Optuna's internals that sft-tune relies on, in one place, written for the versions in
`WRITTEN_FOR`. Each reaches past what those libraries document; tests/test_compat.py checks that
every one is still there, so a release that moves one fails a test instead of a sweep.

Ray Tune's `OptunaSearch` keeps its study and trial handles in private attributes (`_ot_study`,
`_ot_trials`, `_completed_trials`, `_storage`, `_sampler`, `_study_name`); `StudySearch` is the
only class that reads them. A restored Tuner's configs have no public accessor
(ray-project/ray#41364); Tune's experiment-state saving is one private method; a cluster's most
resources, the address of a local `ray start` and the autoscaler monitor of a local Ray (ended
before `ray.shutdown`, which waits a second for it) come from `ray._private`.

Imports Ray Tune and Optuna (1.5 s): modules on the checking side import what they need from here
inside the function that needs it. One private import stays out, for that reason: `upload.py`
reads `.rayignore` files with the matcher Ray's own upload uses (`ray._private.thirdparty`),
without importing Ray Tune.
"""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Callable, Iterator
from typing import Any

import optuna
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

WRITTEN_FOR = {"ray": "2.60", "optuna": "5.1"}

# -- Optuna and Ray Tune's OptunaSearch -----------------------------------------------------------


def running_trial(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> optuna.trial.Trial:
    """A handle on a study's RUNNING trial (to set its user attributes), from its frozen copy."""
    return optuna.trial.Trial(study, frozen._trial_id)


class StudySearch(OptunaSearch):
    """Ray's OptunaSearch over a study in an RDB storage given by URL, which it is never pickled
    with: Tune pickles the searcher into the sweep's state, and a sweep folder that moved must
    reopen the study.db that moved with it, so the searcher holds the URL and reopens the study
    on first use (`study`)."""

    def __init__(self, *args: Any, storage_url: str, **kwargs: Any) -> None:
        self._storage_url = storage_url
        super().__init__(*args, storage=optuna.storages.RDBStorage(storage_url), **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_storage"] = state["_ot_study"] = None
        state["_ot_trials"] = {tid: trial._trial_id for tid, trial in self._ot_trials.items()}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)  # reopened on first use (`study`)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as handle:
            pickle.dump(self.__getstate__(), handle)

    def restore(self, checkpoint_path: str) -> None:
        """Take the saved state, but keep this searcher's storage URL (the folder may have
        moved)."""
        with open(checkpoint_path, "rb") as handle:
            state = pickle.load(handle)
        url = self._storage_url
        self.__dict__.update(state, _storage_url=url, _storage=None, _ot_study=None)
        self.study()
        # The study may be older than this state (a sweep on URI storage syncs study.db when a
        # trial ends): a trial the lost driver had taken from the study's queue is WAITING
        # there again. Its Tune trial goes on, so it is RUNNING with its queued values as
        # parameters, as `ask` and the define-by-run space would have left it.
        study = self._ot_study
        queued = {
            frozen._trial_id
            for frozen in study.get_trials(deepcopy=False)
            if frozen.state == optuna.trial.TrialState.WAITING
        }
        for trial in self._ot_trials.values():
            if trial._trial_id in queued:
                study._storage.set_trial_state_values(
                    trial._trial_id, optuna.trial.TrialState.RUNNING
                )
                if callable(self._space):
                    self._space(trial)

    def study(self) -> optuna.Study:
        """The study, reopened from the storage URL after unpickling or restore."""
        if self._ot_study is None:
            self._storage = optuna.storages.RDBStorage(self._storage_url)
            self._ot_study = optuna.load_study(
                study_name=self._study_name,
                storage=self._storage,
                sampler=self._sampler,
                pruner=optuna.pruners.NopPruner(),
            )
            self._ot_trials = {
                tid: optuna.trial.Trial(self._ot_study, storage_id)
                if isinstance(storage_id, int)
                else storage_id
                for tid, storage_id in self._ot_trials.items()
            }
        return self._ot_study

    def trial_handle(self, trial_id: str) -> optuna.trial.Trial:
        """The Optuna trial of a Tune trial this searcher suggested."""
        return self._ot_trials[trial_id]

    def is_open(self, trial_id: str) -> bool:
        """Whether the Tune trial has an Optuna trial this searcher has not told yet."""
        return trial_id in self._ot_trials and trial_id not in self._completed_trials


class RestoredLimiter(ConcurrencyLimiter):
    """Tune's ConcurrencyLimiter, restored without the trials `settled` names: Tune does not run
    them again, so they would hold their slots forever."""

    def __init__(self, searcher, max_concurrent: int, settled: list[str] = ()) -> None:
        super().__init__(searcher, max_concurrent=max_concurrent)
        self.settled = set(settled)

    def set_state(self, state: dict) -> None:
        settled = self.settled
        super().set_state(state)
        self.settled = settled
        gone = self.live_trials & settled
        self.live_trials -= gone
        self.num_unfinished_live_trials = max(0, self.num_unfinished_live_trials - len(gone))


# -- Ray Tune's Tuner and its experiment state ----------------------------------------------------


def replace_restored_parts(tuner, search_alg=None, scheduler=None, callbacks=None) -> None:
    """`Tuner.restore` unpickles the searcher, scheduler and callbacks a sweep started with; put
    in the ones given (None keeps the restored one)."""
    internal = tuner._local_tuner
    if search_alg is not None:
        internal._tune_config.search_alg = search_alg
    if scheduler is not None:
        internal._tune_config.scheduler = scheduler
    if callbacks is not None:
        internal.get_run_config().callbacks = callbacks


@contextlib.contextmanager
def experiment_saves_only_when(
    pending: Callable[[], bool], on_save: Callable[[], None]
) -> Iterator[None]:
    """While inside: Tune's end-of-step save of its experiment state happens only when `pending()`
    says something changed (or Tune forces one); `on_save()` runs before each save."""
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

    original = _ExperimentCheckpointManager.sync_up_experiment_state

    def sync_up_when_pending(self, save_fn, force: bool = False, wait: bool = False) -> None:
        if not (force or pending() or self._should_force_sync_up):
            return
        on_save()
        original(self, save_fn, force=force, wait=wait)

    _ExperimentCheckpointManager.sync_up_experiment_state = sync_up_when_pending
    try:
        yield
    finally:
        _ExperimentCheckpointManager.sync_up_experiment_state = original


def trial_actor(trial):
    """The Ray actor a running Tune trial trains in (None once it is gone)."""
    return trial.temporary_state.ray_actor


# -- Ray's cluster and upload internals -----------------------------------------------------------


def local_cluster_address() -> str | None:
    """The address of a cluster started on this machine with `ray start` that is still up (the
    one a plain `ray.init()` would attach to), else None."""
    from ray._private.services import find_bootstrap_address, find_gcs_addresses

    address = find_bootstrap_address(None)  # the last `ray start`, maybe stopped since
    return address if address and address in set(find_gcs_addresses()) else None


def end_local_monitor() -> None:
    """End the autoscaler monitor of the local Ray this process started (nothing when it only
    attached to a cluster), before `ray.shutdown`. Ray 2.60's shutdown stops the raylet and the
    GCS first, then gives the monitor one second to exit on SIGTERM; in every run measured it
    did not, and that second was all but 0.07 s of a 1.33-s shutdown. A local Ray's monitor
    holds nothing to save: it scales no nodes."""
    from ray._private import ray_constants, worker

    node = getattr(worker, "_global_node", None)
    if node is None or not node.head:
        return
    for info in node.all_processes.get(ray_constants.PROCESS_TYPE_MONITOR, []):
        if info.process.poll() is None:
            info.process.kill()
            info.process.wait(timeout=10)


def max_cluster_resources() -> dict[str, float] | None:
    """The most resources an autoscaling cluster's config says it can scale to (None or empty
    when it published none)."""
    from ray._private.state import state

    return state.get_max_resources_from_cluster_config()
