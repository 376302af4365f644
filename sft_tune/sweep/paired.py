"""Paired comparison of two trials on the folds both completed: every trial of a sweep trains on
the same folds, so fold j of one and fold j of the other share their held-out data.

The formulas are written once, here. The frequentist side is the Nadeau–Bengio corrected
resampled t-test (the folds' training sets overlap, so the plain variance of the differences is
too small: it is scaled by 1/J + n_test/n_train, J paired folds); the Bayesian side is the
correlated t-test of Corani & Benavoli (2015), whose posterior of the mean difference is a Student
t with J − 1 degrees of freedom, centred on the mean difference, scaled by the corrected standard
error. P(better), P(equivalent) and P(worse) are that posterior's mass beyond +ROPE, inside ±ROPE
and below −ROPE. scikit-learn's guide "Statistical comparison of models using grid search" does
the same; scipy does the distributions."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

LEVEL = 0.95  # the interval's coverage
MOST_FOLDS = 200  # the longest run of folds `more_folds` looks ahead to


@dataclass(frozen=True)
class Comparison:
    """A − B on their paired folds, in the metric's units, signed so that positive means A is
    better (for a `min` metric, A's score is lower). `outcome`: `better` (the interval lies above
    0 and not inside ±ROPE), `worse` (below 0, not inside ±ROPE), `equivalent` (inside ±ROPE),
    `unclear` (none of these: the interval is wider than the ROPE and spans 0); `more_folds`:
    about how many more paired folds, at the same mean and spread, would decide an unclear one
    (None when decided, or when no number of folds would: the correction keeps the interval from
    shrinking below a floor)."""

    folds: int
    mean: float | None
    se: float | None
    low: float | None
    high: float | None
    p_better: float | None
    p_equivalent: float | None
    p_worse: float | None
    rope: float
    outcome: str
    more_folds: int | None = None
    differences: tuple[float, ...] = ()

    def as_dict(self) -> dict:
        return {**asdict(self), "differences": list(self.differences)}


def held_out_ratio(folds: int, validation_fraction: float = 0.2) -> float:
    """n_test / n_train of one fold: 1/(k − 1) for k-fold CV, f/(1 − f) for a holdout of f."""
    if folds >= 2:
        return 1 / (folds - 1)
    return validation_fraction / (1 - validation_fraction)


def paired_differences(a: Sequence[float], b: Sequence[float], mode: str) -> list[float]:
    """A − B fold by fold (signed: positive = A better) on the folds both completed with a
    finite score; a NaN or infinite fold of either drops that pair."""
    sign = 1 if mode == "max" else -1
    return [
        sign * (x - y)
        for x, y in zip(a, b)
        if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)
    ]


def compare(
    a: Sequence[float], b: Sequence[float], mode: str, rope: float, ratio: float
) -> Comparison:
    """Trial A's fold scores against trial B's (fold j with fold j). `ratio` is n_test/n_train
    (`held_out_ratio`). Fewer than 2 paired folds give no spread: the mean alone, outcome
    `equivalent` when it lies inside ±ROPE, else `unclear`."""
    differences = paired_differences(a, b, mode)
    folds = len(differences)
    if folds == 0:
        return Comparison(0, None, None, None, None, None, None, None, rope, "unclear")
    mean = statistics.fmean(differences)
    if folds == 1:
        outcome = "equivalent" if abs(mean) <= rope else "unclear"
        return Comparison(
            1,
            mean,
            None,
            None,
            None,
            None,
            None,
            None,
            rope,
            outcome,
            1 if outcome == "unclear" else None,
            tuple(differences),
        )
    variance = statistics.variance(differences)
    # Scores that differ by the same amount on every fold leave float noise, not spread.
    se = math.sqrt(variance * (1 / folds + ratio)) if variance > 1e-24 else 0.0
    low, high = _interval(mean, se, folds)
    p_better, p_equivalent, p_worse = _posterior(mean, se, folds, rope)
    outcome = _outcome(low, high, rope)
    more = _more_folds(mean, variance, folds, ratio, rope) if outcome == "unclear" else None
    return Comparison(
        folds,
        mean,
        se,
        low,
        high,
        p_better,
        p_equivalent,
        p_worse,
        rope,
        outcome,
        more,
        tuple(differences),
    )


def _interval(mean: float, se: float, folds: int) -> tuple[float, float]:
    from scipy import stats

    half = float(stats.t.ppf((1 + LEVEL) / 2, folds - 1)) * se
    return mean - half, mean + half


def _posterior(mean: float, se: float, folds: int, rope: float) -> tuple[float, float, float]:
    """The correlated t posterior's mass above +ROPE, inside ±ROPE, below −ROPE (with no
    spread at all, the mean's own region holds all of it)."""
    if se == 0:
        return (
            float(mean > rope),
            float(-rope <= mean <= rope),
            float(mean < -rope),
        )
    from scipy import stats

    posterior = stats.t(folds - 1, loc=mean, scale=se)
    below, inside = posterior.cdf(-rope), posterior.cdf(rope)
    return float(1 - inside), float(inside - below), float(below)


def _outcome(low: float, high: float, rope: float) -> str:
    if -rope <= low and high <= rope:
        return "equivalent"
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "unclear"


def _more_folds(mean: float, variance: float, folds: int, ratio: float, rope: float) -> int | None:
    """The fewest more paired folds after which the interval, at this mean and variance, would
    decide; None when even `MOST_FOLDS` folds would not."""
    for total in range(folds + 1, MOST_FOLDS + 1):
        low, high = _interval(mean, math.sqrt(variance * (1 / total + ratio)), total)
        if _outcome(low, high, rope) != "unclear":
            return total - folds
    return None
