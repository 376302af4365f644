"""What to try next: the Optuna searcher of a sweep and its study.

Ray's `OptunaSearch` over a define-by-run space (`ConditionalSpace`: parameters that only act in
phase 1 are sampled only for trials that run it), with these changes. Trials a scheduler stopped
before their last fold are told to Optuna as PRUNED, with their running fold means as
intermediate values (Ray's default tells them as COMPLETE with a partial score, which misleads
TPE). Results that arrive again for a trial the study already closed (a resumed sweep) are
ignored. Each Optuna trial records its Tune trial id (user attribute `tune_trial_id`). And the
study is never pickled with its storage: Tune pickles the searcher into the sweep's state, and a
sweep folder that moved must reopen the study.db that moved with it, so the searcher holds the
storage URL and reopens it (`compat.StudySearch`, which also holds every use of OptunaSearch's
private state).
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import optuna

from sft_tune.compat import StudySearch, running_trial
from sft_tune.sweep.faults import KILL_DRIVER_AFTER_SUGGESTION_ENV, maybe_kill_driver
from sft_tune.sweep.space import Sweep, phase1_only
from sft_tune.sweep.strategy import make_sampler, suggest, to_optuna

TUNE_METRIC = "cv_mean"  # running mean of the task metric over the folds done so far


class ConditionalSpace:
    """The searched parameters as an Optuna define-by-run space: phase1.steps first, then every
    other parameter, except those that only act in phase 1 when the trial skips it (steps 0).
    A plain class, not a closure: Tune pickles it with the searcher."""

    def __init__(self, sweep: Sweep) -> None:
        self.distributions = to_optuna(sweep.params)
        self.fixed_steps = sweep.steps_of({})

    def __call__(self, trial) -> None:
        steps = (
            suggest(trial, "phase1.steps", self.distributions["phase1.steps"])
            if "phase1.steps" in self.distributions
            else self.fixed_steps
        )
        for name, distribution in self.distributions.items():
            if name != "phase1.steps" and not (steps == 0 and phase1_only(name)):
                suggest(trial, name, distribution)


class FoldAwareOptunaSearch(StudySearch):
    """OptunaSearch that records trials stopped before their last fold as PRUNED."""

    def __init__(self, *args: Any, folds: int, storage_url: str, **kwargs: Any) -> None:
        super().__init__(*args, storage_url=storage_url, **kwargs)
        self._folds = folds
        self._last_results: dict[str, dict] = {}  # each live trial's latest result

    # -- Tune's calls ------------------------------------------------------------------------

    def suggest(self, trial_id: str) -> dict | None:
        self.study()
        params = super().suggest(trial_id)
        self.trial_handle(trial_id).set_user_attr("tune_trial_id", trial_id)
        maybe_kill_driver(KILL_DRIVER_AFTER_SUGGESTION_ENV)
        return params

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.study()
        self._last_results = getattr(self, "_last_results", {})  # state saved by older versions
        self._last_results[trial_id] = result
        if result.get("diverged"):
            return  # its running mean may be NaN: Optuna gets no intermediate value from it
        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # finished in the study before the driver went away (a resumed sweep)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        self.study()
        last = getattr(self, "_last_results", {}).pop(trial_id, None)
        diverged = (result or last or {}).get("diverged")
        if diverged and self.is_open(trial_id):
            # A NaN or infinite loss or score: FAIL in the study (TPE learns nothing from a value
            # that is not one), marked as diverged.
            self.trial_handle(trial_id).set_user_attr("diverged", (result or last)["diverged_at"])
            super().on_trial_complete(trial_id, None, error=True)
            return
        if error and (result or last) and (result or last).get("folds_done", 0) >= self._folds:
            # Its process died after the last fold: every fold is scored, the trial is complete.
            result, error = result or last, False
        if result and self.is_open(trial_id):
            # The running CV mean after each fold, as Optuna intermediate values (what TPE ranks
            # pruned trials by).
            scores = json.loads(result.get("fold_scores", "[]"))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # steps Tune already reported are ignored by Optuna
                try:
                    for fold in range(1, len(scores) + 1):
                        self.trial_handle(trial_id).report(sum(scores[:fold]) / fold, fold)
                except optuna.exceptions.UpdateFinishedTrialError:
                    pass  # told before the driver went away (a resumed sweep)
        if result and not error and result.get("folds_done", self._folds) < self._folds:
            result = (
                None  # stopped early: told without a value and without error, Optuna records PRUNED
            )
        super().on_trial_complete(trial_id, result, error)


def close_orphans(study_name: str, storage_url: str, trials: list) -> dict[int, str]:
    """Optuna trials left RUNNING by a killed driver, closed to match what the sweep knows of
    them: COMPLETE (with the CV mean) or PRUNED when their Tune trial ended so, FAIL when no Tune
    trial holds them (the driver died right after suggesting them) or theirs failed. Trials of a
    Tune trial that was interrupted stay RUNNING: a resume re-attaches them. `trials` are the
    sweep's `results.Trial`s; returns {trial number: the state given}."""
    study = optuna.load_study(study_name=study_name, storage=storage_url)
    by_id = {t.trial_id: t for t in trials}
    closed: dict[int, str] = {}
    for frozen in study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.RUNNING]):
        trial = by_id.get(frozen.user_attrs.get("tune_trial_id"))
        status = trial.status.value if trial is not None else None
        if status == "INTERRUPTED":
            continue
        reason = "no Tune trial holds it (the driver was killed right after suggesting it)"
        if status == "COMPLETE" and trial.cv_mean is not None:
            study.tell(frozen.number, trial.cv_mean)
            closed[frozen.number] = "COMPLETE"
            continue
        state = (
            optuna.trial.TrialState.PRUNED if status == "STOPPED" else optuna.trial.TrialState.FAIL
        )
        if status is not None:
            reason = f"its Tune trial ended {status} after the driver that ran it was killed"
        running_trial(study, frozen).set_user_attr("closed_by_resume", reason)
        study.tell(frozen.number, state=state)
        closed[frozen.number] = state.name
    return closed


def make_searcher(sweep: Sweep, storage_url: str, restoring: bool = False) -> FoldAwareOptunaSearch:
    """The Optuna searcher: metric and mode given here too (OptunaSearch ignores TuneConfig's).
    A searcher for a restored sweep enqueues nothing: its saved state is loaded into it."""
    return FoldAwareOptunaSearch(
        space=ConditionalSpace(sweep),
        metric=TUNE_METRIC,
        mode=sweep.search.mode,
        sampler=make_sampler(sweep),
        study_name=sweep.search.name,
        storage_url=storage_url,
        points_to_evaluate=None if restoring else (initial_points(sweep) or None),
        folds=sweep.search.cv_folds,
    )


def initial_points(sweep: Sweep) -> list[dict[str, Any]]:
    """The space's initial points, then, when the space holds both a plain fine-tune (phase1.steps
    0) and two-phase trials, one point for each arm no initial point covers (as far as the trial
    budget allows): the first trials are one of each, so the sweep can always compare them. A
    plain point drops phase-1-only values."""
    points = [
        {k: v for k, v in point.items() if not (sweep.steps_of(point) == 0 and phase1_only(k))}
        for point in sweep.search.initial_points
    ]
    if sweep.arms() == {"plain", "two-phase"}:
        covered = {sweep.steps_of(point) > 0 for point in points}
        missing = [
            sweep.arm_point(arm)
            for arm, two_phase in (("plain", False), ("two-phase", True))
            if two_phase not in covered
        ]
        points += missing[
            : max(sweep.search.num_trials - len(points), 0)
        ]  # within the trial budget
    return points


def record_finished(
    study_name: str, storage_url: str, tune_trial_id: str, fold_scores: list[float]
) -> None:
    """A trial the scheduler stopped (PRUNED in the study) was finished before selection: add it
    to the study as COMPLETE with the same parameters and its full CV mean (an Optuna trial cannot
    change state once finished), marked with `finished_after_stop`."""
    study = optuna.load_study(study_name=study_name, storage=storage_url)
    pruned = [
        t
        for t in study.trials
        if t.user_attrs.get("tune_trial_id") == tune_trial_id
        and not t.user_attrs.get("finished_after_stop")
    ]
    if not pruned or any(
        t.user_attrs.get("finished_after_stop")
        and t.user_attrs.get("tune_trial_id") == tune_trial_id
        for t in study.trials
    ):
        return
    source = pruned[0]
    means = {fold: sum(fold_scores[:fold]) / fold for fold in range(1, len(fold_scores) + 1)}
    study.add_trial(
        optuna.trial.create_trial(
            params=source.params,
            distributions=source.distributions,
            value=means[len(fold_scores)],
            intermediate_values=means,
            user_attrs={
                "tune_trial_id": tune_trial_id,
                "finished_after_stop": True,
                "pruned_trial_number": source.number,
            },
        )
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
