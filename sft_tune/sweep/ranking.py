"""Which trial is best and what the sweep can say about it: one ranking rule, the choice by
`search.select` (paired statistics from `paired.py`, the ROPE), the stopped trials worth finishing,
and the phase-1 verdict."""

from __future__ import annotations

import math
from typing import Any

from sft_tune.runconfig import with_params
from sft_tune.sweep.paired import Comparison, compare, held_out_ratio
from sft_tune.sweep.records import Status, Trial, finite
from sft_tune.sweep.space import Sweep

# -- the ranking rule -----------------------------------------------------------------------------


def rank_key(trial: Trial, mode: str) -> tuple:
    """Better trials sort first: a finite CV mean before a diverged or non-finite one, then the
    CV mean (by mode), then the lower std, then the lower trial id. (NaN compares false with
    everything, so it never enters the comparison: `min` would keep the first NaN.)"""
    sign = -1 if mode == "max" else 1
    valid = trial.status is not Status.DIVERGED and finite(trial.cv_mean)
    return (
        not valid,
        sign * trial.cv_mean if valid else math.inf,
        trial.cv_std if finite(trial.cv_std) else math.inf,
        trial.trial_id,
    )


def table_key(trial: Trial, folds: int, mode: str) -> tuple:
    """The order a table of trials shows them in: the complete ones by the ranking rule, then the
    partial CV means by the same rule, then the trials without a finite score."""
    key = rank_key(trial, mode)
    return (key[0], trial.folds_done < folds, key)


def top(trials: list[Trial], mode: str) -> Trial | None:
    return min(trials, key=lambda t: rank_key(t, mode)) if trials else None


def rankable(trial: Trial) -> bool:
    """A trial that can be chosen: COMPLETE with a finite CV mean."""
    return trial.status is Status.COMPLETE and finite(trial.cv_mean)


def best_trial(sweep: Sweep, trials: list[Trial]) -> dict[str, Any] | None:
    """The chosen COMPLETE trial with a finite CV mean (partial CV means never win, nor do
    diverged trials) by `search.select`'s rule (`choose`), with its full config and the choice."""
    choice = choose(sweep, trials)
    if choice is None:
        return None
    chosen = next(t for t in trials if t.trial_id == choice["chosen"])
    return {
        "trial_id": chosen.trial_id,
        "cv_mean": chosen.cv_mean,
        "cv_std": chosen.cv_std,
        "fold_scores": chosen.fold_scores,
        "metric": sweep.search.metric,
        "params": chosen.params,
        "choice": choice,
        "config": with_params(sweep.base, chosen.params),
    }


def compare_trials(sweep: Sweep, a: Trial, b: Trial) -> Comparison:
    """Trial A against trial B on their paired folds (positive: A is better)."""
    search = sweep.search
    ratio = held_out_ratio(search.folds, sweep.base_config.data.validation_fraction)
    return compare(a.fold_scores, b.fold_scores, search.mode, search.rope, ratio)


def told_apart(comparison: Comparison) -> bool:
    """Whether the best trial (A) is better than B beyond doubt. With no spread to judge by
    (one paired fold) only a difference inside the ROPE counts as no difference."""
    if comparison.se is None:
        return comparison.outcome != "equivalent"
    return comparison.outcome == "better"


def cost(sweep: Sweep, trial: Trial) -> tuple:
    """What `select: simplest` minimises: phase-1 steps, then wall seconds per fold."""
    seconds = trial.seconds_per_fold if finite(trial.seconds_per_fold) else math.inf
    return (sweep.steps_of(trial.params), seconds)


def choose(sweep: Sweep, trials: list[Trial]) -> dict[str, Any] | None:
    """The choice among the rankable trials: the top one (best CV mean, `rank_key`), the
    trials it cannot be told apart from (paired on their folds, with the ROPE), each one's cost,
    the trial `search.select` picks (`best`: the top one; `simplest`: the cheapest of the top
    one and those, by `cost`, ties to the better rank) and the runner-up (the best-ranked other
    trial, with the chosen one's difference from it)."""
    mode = sweep.search.mode
    ranked = sorted((t for t in trials if rankable(t)), key=lambda t: rank_key(t, mode))
    if not ranked:
        return None
    best = ranked[0]
    close = [(t, compare_trials(sweep, best, t)) for t in ranked[1:]]
    close = [(t, gap) for t, gap in close if not told_apart(gap)]
    chosen = best
    if sweep.search.select == "simplest":
        chosen = min([best] + [t for t, _ in close], key=lambda t: cost(sweep, t))
    others = [t for t in ranked if t is not chosen]
    runner_up = others[0] if others else None
    return {
        "rule": sweep.search.select,
        "chosen": chosen.trial_id,
        "top": best.trial_id,
        "indistinguishable": [
            {
                "trial_id": t.trial_id,
                "cv_mean": t.cv_mean,
                "phase1_steps": sweep.steps_of(t.params),
                "seconds_per_fold": t.seconds_per_fold,
                "behind_top": _interval_dict(gap),
            }
            for t, gap in close
        ],
        "cost": {
            "phase1_steps": sweep.steps_of(chosen.params),
            "seconds_per_fold": chosen.seconds_per_fold,
        },
        "runner_up": runner_up
        and {
            "trial_id": runner_up.trial_id,
            "cv_mean": runner_up.cv_mean,
            "chosen_minus_runner_up": _interval_dict(compare_trials(sweep, chosen, runner_up)),
        },
    }


def _interval_dict(gap: Comparison) -> dict[str, Any]:
    return {"mean": gap.mean, "low": gap.low, "high": gap.high, "folds": gap.folds}


def choice_text(choice: dict[str, Any], metric: str) -> str:
    """One line: which rule chose which trial, what it could not be told apart from, the
    runner-up."""
    chosen, rule = choice["chosen"], choice["rule"]
    close = choice["indistinguishable"]
    text = f"trial {chosen} chosen by `select: {rule}`"
    if rule == "simplest" and chosen != choice["top"]:
        text += f" (the best CV mean is trial {choice['top']}'s)"
    if close:
        text += f"; the best trial cannot be told apart from {len(close)} other(s): " + ", ".join(
            f"{c['trial_id']} ({c['phase1_steps']} phase-1 steps, "
            f"{_seconds(c['seconds_per_fold'])}/fold)"
            for c in close
        )
    else:
        text += "; every other trial is behind the best beyond doubt"
    runner = choice["runner_up"]
    if runner:
        gap = runner["chosen_minus_runner_up"]
        text += (
            f"; runner-up {runner['trial_id']} (CV {metric} {runner['cv_mean']:.4f}, chosen "
            f"− runner-up {_signed_interval(gap)})"
        )
    return text


def _seconds(value: float | None) -> str:
    return f"{value:.1f} s" if finite(value) else "? s"


def _signed_interval(gap: dict[str, Any]) -> str:
    if gap["mean"] is None:
        return "no paired fold"
    if gap["low"] is None:
        return f"{gap['mean']:+.4f} on {gap['folds']} fold"
    return f"{gap['mean']:+.4f} [{gap['low']:+.4f}, {gap['high']:+.4f}]"


def arm_of(sweep: Sweep, trial: Trial) -> str:
    return "two-phase" if sweep.steps_of(trial.params) > 0 else "plain"


def contenders(sweep: Sweep, trials: list[Trial]) -> list[Trial]:
    """Stopped trials to finish before the best is chosen: each whose partial CV mean reaches the
    best complete mean (early stopping must not hide a better configuration; with no complete
    trial, the best stopped one), and, when the space holds both arms, the best stopped trial of
    an arm that has no complete trial (so the phase-1 verdict compares the two)."""
    mode = sweep.search.mode
    stopped = [
        t for t in trials if t.status is Status.STOPPED and t.checkpoint and finite(t.cv_mean)
    ]
    complete = [t for t in trials if rankable(t)]
    best = top(complete, mode)
    if best is None:
        chosen = [top(stopped, mode)] if stopped else []
    else:
        chosen = [t for t in stopped if rank_key(t, mode)[:2] <= rank_key(best, mode)[:2]]
    if sweep.arms() == {"plain", "two-phase"}:
        for arm in ("plain", "two-phase"):
            if not any(arm_of(sweep, t) == arm for t in complete + chosen):
                candidate = top([t for t in stopped if arm_of(sweep, t) == arm], mode)
                chosen += [candidate] if candidate else []
    return sorted(chosen, key=lambda t: t.trial_id)


# -- the phase-1 verdict --------------------------------------------------------------------------


def phase1_verdict(
    sweep: Sweep, trials: list[Trial], choice: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Did phase 1 pay off here? The best two-phase trial against the best plain fine-tune
    (phase1.steps = 0), both COMPLETE, paired on their folds (`paired.compare`): `helped`,
    `hurt`, `no difference` (the interval inside ±ROPE) or `can't tell` (with about how many more
    folds would decide). Never a bare margin: the statement gives the interval and P. It also says
    whether the chosen configuration uses phase 1 and what happened to each arm's trials.
    `choice`: what `choose` made of these trials, when the caller has it already."""
    mode = sweep.search.mode
    arms = {arm: [t for t in trials if arm_of(sweep, t) == arm] for arm in ("plain", "two-phase")}
    best = {arm: top([t for t in group if rankable(t)], mode) for arm, group in arms.items()}
    two_phase, plain = best["two-phase"], best["plain"]
    choice = choice or choose(sweep, trials)
    chosen = choice and next(t for t in trials if t.trial_id == choice["chosen"])
    verdict: dict[str, Any] = {
        "best_two_phase": two_phase
        and {"trial_id": two_phase.trial_id, "cv_mean": two_phase.cv_mean},
        "best_plain": plain and {"trial_id": plain.trial_id, "cv_mean": plain.cv_mean},
        "best_uses_phase1": chosen and sweep.steps_of(chosen.params) > 0,
        "outcome": None,
        "difference": None,
        "arms": {arm: _arm_counts(group) for arm, group in arms.items()},
    }
    happened = "; ".join(
        f"{arm}: {_describe(counts)}" for arm, counts in verdict["arms"].items() if counts["trials"]
    )
    if two_phase and plain:
        gap = compare_trials(sweep, two_phase, plain)
        outcome = OUTCOMES[gap.outcome]
        uses = "uses phase 1" if verdict["best_uses_phase1"] else "is a plain fine-tune"
        verdict.update(outcome=outcome, difference=gap.as_dict())
        verdict["statement"] = (
            f"{_outcome_text(sweep, gap, two_phase, plain)}; the chosen configuration "
            f"(trial {chosen.trial_id}) {uses} ({happened})"
        )
        return verdict
    space_arms = sweep.arms()
    if len(space_arms) == 1:
        (only,) = space_arms
        fixed = "above 0" if only == "two-phase" else "at 0"
        verdict["statement"] = (
            f"the search space keeps phase1.steps {fixed}, so every trial is {only} and this "
            f"sweep makes no plain-vs-two-phase comparison ({happened or 'no trial ran'})"
        )
    else:
        missing = [arm for arm in ("plain", "two-phase") if best[arm] is None]
        verdict["statement"] = (
            f"no {' and no '.join(missing)} trial finished all folds, so this sweep cannot "
            f"compare the two ({happened or 'no trial ran'})"
        )
    return verdict


# A comparison's outcome (two-phase − plain) as the verdict words it.
OUTCOMES = {
    "better": "helped",
    "worse": "hurt",
    "equivalent": "no difference",
    "unclear": "can't tell",
}


def _outcome_text(sweep: Sweep, gap: Comparison, two_phase: Trial, plain: Trial) -> str:
    """The verdict's first sentence: the outcome, the paired difference with its 95% interval,
    the posterior probability that matters, and for `can't tell` what would decide."""
    search = sweep.search
    rope, metric = search.rope, search.metric
    pair = f"CV {metric}, two-phase trial {two_phase.trial_id} − plain trial {plain.trial_id}"
    if gap.se is None:  # one paired fold: no spread to judge by
        where = "inside" if gap.outcome == "equivalent" else "outside"
        words = "no difference that matters" if gap.outcome == "equivalent" else "can't tell"
        return (
            f"{words}: "
            f"{gap.mean:+.4f} ({pair}) on one paired fold, {where} the ROPE ±{rope:g}; one fold "
            "gives no spread to judge by: use search.folds >= 2 or search.repeats"
        )
    interval = (
        f"{gap.mean:+.4f} [{gap.low:+.4f}, {gap.high:+.4f}] ({pair}, 95% interval on "
        f"{gap.folds} paired folds)"
    )
    if gap.outcome == "better":
        return (
            f"phase 1 helped: {interval}, P(better by more than the ROPE {rope:g}) = "
            f"{gap.p_better:.2f}"
        )
    if gap.outcome == "worse":
        return (
            f"phase 1 hurt: {interval}, P(worse by more than the ROPE {rope:g}) = {gap.p_worse:.2f}"
        )
    if gap.outcome == "equivalent":
        return (
            f"no difference that matters: {interval} lies inside ±{rope:g} (the ROPE), "
            f"P(equivalent) = {gap.p_equivalent:.2f}"
        )
    text = (
        f"can't tell yet: the interval of {interval} is wider than the ROPE ±{rope:g} and "
        f"spans 0 (P(better) = {gap.p_better:.2f}, P(equivalent) = {gap.p_equivalent:.2f}, "
        f"P(worse) = {gap.p_worse:.2f})"
    )
    if gap.more_folds is None:
        return (
            text + "; more folds alone would not decide at this fold-to-fold spread (the "
            "corrected interval cannot narrow enough): a larger search.rope or more labelled "
            "data would"
        )
    repeats = math.ceil((gap.folds + gap.more_folds) / search.folds)
    return text + f"; about {gap.more_folds} more folds (search.repeats: {repeats}) would decide"


def _arm_counts(group: list[Trial]) -> dict[str, int]:
    counts = {
        "trials": len(group),
        "finished_after_stop": sum(t.finished_after_stop for t in group),
    }
    counts.update(
        {
            status.value.lower().replace(" ", "_"): sum(t.status is status for t in group)
            for status in Status
        }
    )
    return counts


def _describe(counts: dict[str, int]) -> str:
    parts = [f"{counts['trials']} sampled"]
    parts += [
        f"{counts[key]} {key.replace('_', ' ')}"
        for key in ("complete", "stopped", "diverged", "error", "interrupted", "not_run")
        if counts[key]
    ]
    if counts["finished_after_stop"]:
        parts.append(
            f"{counts['finished_after_stop']} of the complete ones finished after the scheduler "
            "stopped them"
        )
    return ", ".join(parts)
