"""What to try next and when to stop: the sampler registry (Optuna samplers by short name), the
scheduler registry (what stops a trial between folds: ASHA, racing, the median rule, none), and
the one translation of the space's short form into Optuna distributions, which the define-by-run
space, the grid and the samplers all read.

The space check reads the registries before Ray starts, so Ray is imported only inside a
scheduler's builder.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import optuna

if TYPE_CHECKING:
    from sft_tune.sweep.folder import SweepFolder
    from sft_tune.sweep.space import Param, Sweep

# -- what to try next -----------------------------------------------------------------------------
SAMPLERS = {
    "tpe": "TPESampler",
    "random": "RandomSampler",
    "grid": "GridSampler",
    "cmaes": "CmaEsSampler",
    "qmc": "QMCSampler",
    "gp": "GPSampler",
    "nsga2": "NSGAIISampler",
    "bruteforce": "BruteForceSampler",
}


def sampler_class(name: str) -> type[optuna.samplers.BaseSampler]:
    """The Optuna sampler class for a short name or class name (KeyError when unknown)."""
    cls_name = SAMPLERS.get(name.lower(), name)
    cls = getattr(optuna.samplers, cls_name, None)
    if (
        not (isinstance(cls, type) and issubclass(cls, optuna.samplers.BaseSampler))
        or cls is optuna.samplers.BaseSampler
    ):
        raise KeyError(name)
    return cls


def make_sampler(sweep: Sweep) -> optuna.samplers.BaseSampler:
    """Instantiate the sampler, seeded (GridSampler gets the grid of the params)."""
    cls = sampler_class(sweep.search.sampler)
    if cls is optuna.samplers.GridSampler:
        return cls(grid(sweep.params), seed=sweep.search.seed)
    try:
        return cls(seed=sweep.search.seed)
    except TypeError:
        return cls()


def grid(params: dict[str, Param]) -> dict[str, list[Any]]:
    grid = {}
    for dotted, param in params.items():
        if param.type == "categorical":
            grid[dotted] = list(param.choices)
            continue
        step = param.step or 1
        count = int(round((param.high - param.low) / step)) + 1
        cast = int if param.type == "int" else float
        grid[dotted] = [cast(param.low + i * step) for i in range(count)]
    return grid


def to_optuna(params: dict[str, Param]) -> dict[str, optuna.distributions.BaseDistribution]:
    """The one translation of the short form into Optuna distributions."""
    dists: dict[str, optuna.distributions.BaseDistribution] = {}
    for dotted, param in params.items():
        if param.type == "categorical":
            dists[dotted] = optuna.distributions.CategoricalDistribution(param.choices)
        elif param.type == "int":
            dists[dotted] = optuna.distributions.IntDistribution(
                int(param.low), int(param.high), log=param.log, step=int(param.step or 1)
            )
        else:
            dists[dotted] = optuna.distributions.FloatDistribution(
                param.low, param.high, log=param.log, step=param.step
            )
    return dists


def suggest(trial, name: str, distribution: optuna.distributions.BaseDistribution) -> Any:
    """The value of one parameter for an Optuna trial, drawn from its distribution."""
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        return trial.suggest_categorical(name, distribution.choices)
    if isinstance(distribution, optuna.distributions.IntDistribution):
        return trial.suggest_int(
            name, distribution.low, distribution.high, step=distribution.step, log=distribution.log
        )
    return trial.suggest_float(
        name, distribution.low, distribution.high, step=distribution.step, log=distribution.log
    )


# -- when to stop ---------------------------------------------------------------------------------


def _asha(sweep: Sweep, resumed: SweepFolder | None):
    from ray.tune.schedulers import ASHAScheduler

    # max_t one past the last fold: a trial that reaches its last fold ends by itself (a clean
    # teardown) instead of being stopped by the scheduler at the same moment.
    return ASHAScheduler(
        time_attr="training_iteration",
        max_t=sweep.search.cv_folds + 1,
        grace_period=1,
        reduction_factor=2,
    )


def _median(sweep: Sweep, resumed: SweepFolder | None):
    from ray.tune.schedulers import MedianStoppingRule

    return MedianStoppingRule(
        time_attr="training_iteration", grace_period=1, min_samples_required=2
    )


def _racing(sweep: Sweep, resumed: SweepFolder | None):
    """A resumed sweep's racing scheduler knows the trials that ran every fold before (from
    `resumed`'s events)."""
    from sft_tune.sweep.paired import held_out_ratio
    from sft_tune.sweep.racing import RacingScheduler

    settings = sweep.search
    folds = settings.cv_folds
    ratio = held_out_ratio(settings.folds, sweep.base_config.data.validation_fraction)
    known = complete_fold_scores(resumed.events(), folds) if resumed else None
    return RacingScheduler(folds, settings.mode, settings.rope, ratio, known=known)


def _none(sweep: Sweep, resumed: SweepFolder | None):
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


# `search.scheduler` names one of these (the schema's Literal lists the same names).
SCHEDULERS = {"asha": _asha, "racing": _racing, "median": _median, "none": _none}


def make_scheduler(sweep: Sweep, resumed: SweepFolder | None = None):
    """The Tune scheduler `search.scheduler` names, for a new sweep or one resumed from
    `resumed`."""
    return SCHEDULERS[sweep.search.scheduler](sweep, resumed)


def complete_fold_scores(events: list[dict[str, Any]], folds: int) -> dict[str, list[float]]:
    """The fold scores of every trial whose events hold all its folds, by trial id."""
    by_trial: dict[str, dict[int, float]] = {}
    for event in events:
        if event["event"] == "fold":
            by_trial.setdefault(event["trial_id"], {})[int(event["fold"])] = event["score"]
    return {
        trial_id: [scores[f] for f in sorted(scores)]
        for trial_id, scores in by_trial.items()
        if len(scores) >= folds
    }
