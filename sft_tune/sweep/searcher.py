"""What to try next: the Optuna searcher of a sweep and its study.

Ray's `OptunaSearch` with three changes. Trials a scheduler stopped before their last fold are
told to Optuna as PRUNED, with their running fold means as intermediate values (Ray's default
tells them as COMPLETE with a partial score, which misleads TPE). Results that arrive again for a
trial the study already closed (a resumed sweep) are ignored. And the study is never pickled with
its storage: Tune pickles the searcher into the sweep's state, and a sweep folder that moved must
reopen the study.db that moved with it, so the searcher holds the storage URL and reopens it.
"""

from __future__ import annotations

import json
import pickle
import warnings
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

from sft_tune.space import Sweep, make_sampler, to_optuna

TUNE_METRIC = "cv_mean"  # running mean of the task metric over the folds done so far


class FoldAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that records trials stopped before their last fold as PRUNED."""

    def __init__(self, *args: Any, folds: int, storage_url: str, **kwargs: Any) -> None:
        self._storage_url = storage_url
        super().__init__(*args, storage=optuna.storages.RDBStorage(storage_url), **kwargs)
        self._folds = folds

    # -- persistence: the storage URL, never a live storage ----------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_storage"] = state["_ot_study"] = None
        state["_ot_trials"] = {tid: trial._trial_id for tid, trial in self._ot_trials.items()}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)  # reopened on first use (`_study`)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as handle:
            pickle.dump(self.__getstate__(), handle)

    def restore(self, checkpoint_path: str) -> None:
        """Take the saved state, but keep this searcher's storage URL (the folder may have moved)."""
        with open(checkpoint_path, "rb") as handle:
            state = pickle.load(handle)
        url = self._storage_url
        self.__dict__.update(state, _storage_url=url, _storage=None, _ot_study=None)
        self._study()

    def _study(self) -> optuna.Study:
        """The study, reopened from the storage URL after unpickling or restore."""
        if self._ot_study is None:
            self._storage = optuna.storages.RDBStorage(self._storage_url)
            self._ot_study = optuna.load_study(study_name=self._study_name, storage=self._storage, sampler=self._sampler, pruner=optuna.pruners.NopPruner())
            self._ot_trials = {tid: optuna.trial.Trial(self._ot_study, number) if isinstance(number, int) else number for tid, number in self._ot_trials.items()}
        return self._ot_study

    # -- Tune's calls ------------------------------------------------------------------------

    def suggest(self, trial_id: str) -> dict | None:
        self._study()
        return super().suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._study()
        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # finished in the study before the driver went away (a resumed sweep)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self._study()
        if result and trial_id in self._ot_trials and trial_id not in self._completed_trials:
            # The running CV mean after each fold, as Optuna intermediate values (what TPE ranks
            # pruned trials by).
            scores = json.loads(result.get("fold_scores", "[]"))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # steps Tune already reported are ignored by Optuna
                try:
                    for fold in range(1, len(scores) + 1):
                        self._ot_trials[trial_id].report(sum(scores[:fold]) / fold, fold)
                except optuna.exceptions.UpdateFinishedTrialError:
                    pass  # told before the driver went away (a resumed sweep)
        if result and not error and result.get("folds_done", self._folds) < self._folds:
            result = None  # stopped early: told without a value and without error, Optuna records PRUNED
        super().on_trial_complete(trial_id, result, error)


def make_searcher(sweep: Sweep, storage_url: str, restoring: bool = False) -> FoldAwareOptunaSearch:
    """The Optuna searcher: metric and mode given here too (OptunaSearch ignores TuneConfig's).
    A searcher for a restored sweep enqueues nothing: its saved state is loaded into it."""
    return FoldAwareOptunaSearch(
        space=to_optuna(sweep.params),
        metric=TUNE_METRIC,
        mode=sweep.search.mode,
        sampler=make_sampler(sweep),
        study_name=sweep.search.name,
        storage_url=storage_url,
        points_to_evaluate=None if restoring else (sweep.search.initial_points or None),
        folds=sweep.search.folds,
    )


def optuna_states(study_name: str, storage_url: str) -> dict[str, int]:
    """How many trials of the study are in each Optuna state (empty when there is no study)."""
    try:
        study = optuna.load_study(study_name=study_name, storage=storage_url)
    except KeyError:
        return {}
    states: dict[str, int] = {}
    for trial in study.trials:
        states[trial.state.name] = states.get(trial.state.name, 0) + 1
    return states
