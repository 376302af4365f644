"""What a sweep found: one `Trial` record per trial, one ranking rule, the stopped trials worth
finishing, the phase-1 verdict, and the files and table that show it."""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from sft_tune.space import Sweep, with_params
from sft_tune.sweep.folder import SweepFolder, fold_checkpoint, with_scheme
from sft_tune.sweep.paired import Comparison, compare, held_out_ratio

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # terminal colour codes (Ray colours its task names)


def error_text(
    error: BaseException | str | None, traceback: str | Path | None = None
) -> str | None:
    """What a trial died of, readable: `Type: first line of the message` of the exception it
    raised (Ray wraps it in a RayTaskError whose text starts with the colour-coded task name),
    no colour codes, and where the full traceback is (`traceback`: the trial folder's error.txt)."""
    if error is None:
        return None
    cause = getattr(error, "cause", None)
    root = cause if isinstance(cause, BaseException) else error
    lines = [line.strip() for line in ANSI.sub("", str(root)).splitlines() if line.strip()]
    if isinstance(root, str) or (lines and lines[0].startswith("ray::")):
        # A traceback as text (error.txt, or Ray's wrapper): its last `Type: message` line.
        found = [line for line in lines if _names_an_exception(line)]
        text = found[-1] if found else (lines[-1] if lines else "unknown error")
    else:
        name = type(root).__name__
        text = f"{name}: {lines[0]}" if lines else name
    return text + (f" (traceback: {traceback})" if traceback is not None else "")


def trial_error_text(trial, storage_path: str = "") -> str | None:
    """`error_text` of a Tune trial that failed (its pickled exception, else its error.txt).
    `storage_path`: the sweep's (a URI puts the scheme back on the trial's path)."""
    error = None
    for read in (trial.get_pickled_error, trial.get_error):
        try:
            error = error or read()
        except Exception:  # still being written by Tune ("Ran out of input"), or unreadable
            continue
    path = getattr(trial, "error_file", None)
    written = bool(path) and Path(path).is_file()
    if error is None and written:
        error = Path(path).read_text()
    # Tune writes it in the trial's local folder and syncs it to the trial's storage folder.
    where = with_scheme(f"{trial.path}/{Path(path).name}", storage_path) if written else None
    return error_text(error, where)


def _traceback(trial_path: str | None, storage_path: str = "") -> str | None:
    """The error.txt Tune writes in a failed trial's folder (on URI storage: its URI, whose
    existence is not checked here)."""
    if not trial_path:
        return None
    if "://" in storage_path:
        return with_scheme(f"{trial_path}/error.txt", storage_path)
    path = Path(trial_path, "error.txt")
    return str(path) if path.is_file() else None


def _names_an_exception(line: str) -> bool:
    """`ValueError: ...`, `ray.exceptions.ActorDiedError: ...`: a dotted name, capitalised last."""
    name = line.split(":", 1)[0]
    return (
        ":" in line and name.replace(".", "").isidentifier() and name.split(".")[-1][:1].isupper()
    )


def all_folds_done(result: dict[str, Any] | None, folds: int) -> bool:
    """Whether a trial's (last) result holds every fold: such a trial is COMPLETE whatever
    happened to its process afterwards."""
    return bool(result) and int(result.get("folds_done", 0)) >= folds


def end_status(result: dict[str, Any] | None, folds: int) -> Status:
    """How a trial whose process ended by itself (or was stopped) ended, from its last result:
    DIVERGED when a fold's loss or score was not finite (the trial stops there), COMPLETE with
    every fold, else STOPPED (by the scheduler). One rule for the events, the progress view,
    W&B and the trial records."""
    if result and result.get("diverged"):
        return Status.DIVERGED
    return Status.COMPLETE if all_folds_done(result, folds) else Status.STOPPED


def finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


class Status(str, Enum):
    """How a trial ended."""

    COMPLETE = "COMPLETE"  # every fold trained and scored
    STOPPED = "STOPPED"  # stopped early by the scheduler after some folds
    ERROR = "ERROR"  # failed (after its retries)
    INTERRUPTED = (
        "INTERRUPTED"  # the sweep stopped (Ctrl-C, a killed driver) while it ran: resume to go on
    )
    NOT_RUN = "NOT RUN"  # never reported a fold (e.g. the sweep was interrupted first)
    # a fold's loss or score was NaN or infinite: the trial stopped there, it ranks after every
    # finite trial and is never chosen nor finished
    DIVERGED = "DIVERGED"


@dataclass
class Trial:
    """One trial of a sweep, as written to trials.json."""

    trial_id: str
    status: Status
    params: dict[str, Any]
    folds_done: int = 0
    cv_mean: float | None = None
    cv_std: float | None = None
    fold_scores: list[float] = field(default_factory=list)
    attempts: int = 0
    error: str | None = None
    checkpoint: str | None = (
        None  # the last fold checkpoint: where finishing a stopped trial resumes
    )
    finished_after_stop: bool = False  # stopped by the scheduler, then finished before selection
    diverged_at: str | None = None  # DIVERGED: the first NaN or infinite loss or score
    worker_tokenization_passes: int = 0
    encoding: str | None = None  # digest of the encoded labelled data its folds trained on
    process_model_loads: int = (
        0  # model loads in the process that ran its last fold (1 in a reused actor)
    )
    cuda_peak_mb: float | None = None  # the most CUDA memory one of its folds held (GPU trials)
    seconds_per_fold: float | None = None  # training and scoring wall seconds per fold (its cost)
    trainable_parameters: int | None = None  # what its folds trained (adapters + heads with LoRA)
    process_rss_mb: float | None = None  # its process's resident memory after its last fold

    def row(self) -> dict[str, Any]:
        """The flat record of trials.json / trials.csv (parameters as `param:NAME`)."""
        row = {k: v for k, v in asdict(self).items() if k != "params"}
        return {
            **row,
            "status": self.status.value,
            **{f"param:{k}": v for k, v in self.params.items()},
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Trial:
        known = {k: v for k, v in row.items() if k in cls.__dataclass_fields__ and k != "params"}
        params = {k.removeprefix("param:"): v for k, v in row.items() if k.startswith("param:")}
        return cls(**{**known, "status": Status(row["status"])}, params=params)


@dataclass
class SweepResult:
    """What a finished (or interrupted) sweep produced."""

    sweep_dir: Path
    trials: list[Trial]
    best: dict[str, Any] | None
    tokenization_passes: int
    complete: bool
    optuna_states: dict[str, int] = field(default_factory=dict)
    verdict: dict[str, Any] = field(default_factory=dict)


def collect(sweep: Sweep, folder: SweepFolder, results) -> list[Trial]:
    """Trial records from a Tune ResultGrid (one entry per Tune trial), sorted by trial id."""
    events = folder.events()
    # Trials the scheduler stopped (a later end event may be that of their finishing run).
    stopped = {
        e["trial_id"] for e in events if e["event"] == "end" and e["status"] == Status.STOPPED
    }
    trials = []
    for result in results:
        metrics = result.metrics or {}
        # Tune fills in its own `trial_id`; a trial that finishes a stopped one reports that one's id.
        trial_id = (
            metrics.get("sweep_trial_id")
            or metrics.get("trial_id")
            or _trial_id_from_path(result.path)
        )
        done = int(metrics.get("folds_done", 0))
        if metrics.get("diverged"):
            status = Status.DIVERGED
        elif done >= sweep.search.cv_folds:  # also when its process died after the last fold
            status = Status.COMPLETE
        elif result.error:
            status = Status.ERROR
        elif done:  # stopped by the scheduler, or cut short by the end of the sweep's driver
            status = Status.STOPPED if trial_id in stopped else Status.INTERRUPTED
        else:
            status = Status.NOT_RUN
        trials.append(
            Trial(
                trial_id=trial_id,
                status=status,
                params={k: v for k, v in (result.config or {}).items() if k in sweep.params},
                folds_done=done,
                cv_mean=metrics.get("cv_mean"),
                cv_std=metrics.get("cv_std"),
                fold_scores=json.loads(metrics.get("fold_scores", "[]")),
                attempts=sum(e["event"] == "start" and e["trial_id"] == trial_id for e in events),
                error=error_text(result.error, _traceback(result.path, folder.storage_path))
                if status is Status.ERROR
                else None,
                checkpoint=fold_checkpoint(result.path, metrics, folder.storage_path),
                diverged_at=metrics.get("diverged_at"),
                worker_tokenization_passes=metrics.get("worker_tokenization_passes", 0),
                encoding=metrics.get("encoding"),
                process_model_loads=metrics.get("process_model_loads", 0),
                cuda_peak_mb=_peak(metrics),
                trainable_parameters=metrics.get("trainable_parameters"),
                process_rss_mb=metrics.get("process_rss_mb"),
                seconds_per_fold=metrics["fold_seconds_total"] / done
                if done and metrics.get("fold_seconds_total")
                else None,
            )
        )
    return sorted(trials, key=lambda t: t.trial_id)


def _peak(metrics: dict[str, Any]) -> float | None:
    """The largest per-fold CUDA peak a trial reported (its folds' running maximum)."""
    return metrics.get("cuda_peak_max_mb", metrics.get("cuda_peak_mb"))


def search_ended(sweep: Sweep, trials: list[Trial]) -> bool:
    """Whether every trial of the search ran to its end (none interrupted, none left to run)."""
    ended = [t for t in trials if t.status not in (Status.NOT_RUN, Status.INTERRUPTED)]
    return len(ended) == len(trials) and len(ended) >= sweep.search.num_trials


def _trial_id_from_path(path: str) -> str:
    """Tune names trial folders `<trainable>_<trial id>_<n>_...`; the trainable here is run_trial."""
    return Path(path).name.removeprefix("run_trial_").split("_")[0]


def read_trials(folder: SweepFolder) -> list[Trial]:
    return [Trial.from_row(row) for row in folder.trials()]


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
        text += f"; runner-up {runner['trial_id']} (CV {metric} {runner['cv_mean']:.4f}, chosen − runner-up {_signed_interval(gap)})"
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
            f"the search space keeps phase1.steps {fixed}, so every trial is {only} and this sweep makes no plain-vs-two-phase comparison ({happened or 'no trial ran'})"
        )
    else:
        missing = [arm for arm in ("plain", "two-phase") if best[arm] is None]
        verdict["statement"] = (
            f"no {' and no '.join(missing)} trial finished all folds, so this sweep cannot compare the two ({happened or 'no trial ran'})"
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
    interval = f"{gap.mean:+.4f} [{gap.low:+.4f}, {gap.high:+.4f}] ({pair}, 95% interval on {gap.folds} paired folds)"
    if gap.outcome == "better":
        return f"phase 1 helped: {interval}, P(better by more than the ROPE {rope:g}) = {gap.p_better:.2f}"
    if gap.outcome == "worse":
        return (
            f"phase 1 hurt: {interval}, P(worse by more than the ROPE {rope:g}) = {gap.p_worse:.2f}"
        )
    if gap.outcome == "equivalent":
        return f"no difference that matters: {interval} lies inside ±{rope:g} (the ROPE), P(equivalent) = {gap.p_equivalent:.2f}"
    text = f"can't tell yet: the interval of {interval} is wider than the ROPE ±{rope:g} and spans 0 (P(better) = {gap.p_better:.2f}, P(equivalent) = {gap.p_equivalent:.2f}, P(worse) = {gap.p_worse:.2f})"
    if gap.more_folds is None:
        return (
            text + "; more folds alone would not decide at this fold-to-fold spread (the "
            "corrected interval cannot narrow enough): a larger search.rope or more labelled data would"
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
            f"{counts['finished_after_stop']} of the complete ones finished after the scheduler stopped them"
        )
    return ", ".join(parts)


# -- files and the table --------------------------------------------------------------------------


def summarize(
    sweep: Sweep,
    folder: SweepFolder,
    trials: list[Trial],
    tokenization_passes: int,
    lm_data: dict[str, Any] | None = None,
    encodings: int = 1,
) -> SweepResult:
    """Best configuration, verdict and sweep summary of the trials, written to the sweep folder."""
    from sft_tune.sweep.searcher import optuna_states  # imports Ray Tune: only when a sweep ends

    best = best_trial(sweep, trials)
    states = optuna_states(sweep.search.name, folder.optuna_url(sweep.search.optuna_storage))
    passes = tokenization_passes + sum(t.worker_tokenization_passes for t in trials)
    complete = search_ended(sweep, trials)
    verdict = phase1_verdict(sweep, trials, best and best["choice"])
    _write_trials(folder, trials)
    if best is not None:
        folder.file(folder.BEST).write_text(
            json.dumps({k: v for k, v in best.items() if k != "config"}, indent=2)
        )
        folder.file(folder.BEST_CONFIG).write_text(yaml.safe_dump(best["config"], sort_keys=False))
    summary = {
        "sweep_dir": str(folder.path),
        "complete": complete,
        "trials": len(trials),
        "tokenization_passes": passes,
        "encodings": encodings,
        "lm_data": lm_data,
        "optuna_states": states,
        "statuses": {s.value: sum(t.status is s for t in trials) for s in Status},
        "finished_after_stop": [t.trial_id for t in trials if t.finished_after_stop],
        "best": {k: v for k, v in (best or {}).items() if k != "config"} or None,
        "phase1": verdict,
    }
    folder.file(folder.SUMMARY).write_text(json.dumps(summary, indent=2))
    return SweepResult(folder.path, trials, best, passes, complete, states, verdict)


def _write_trials(folder: SweepFolder, trials: list[Trial]) -> None:
    rows = [t.row() for t in trials]
    columns = [
        "trial_id",
        "status",
        "attempts",
        "folds_done",
        "cv_mean",
        "cv_std",
        "fold_scores",
        "finished_after_stop",
        "error",
        "diverged_at",
        "encoding",
        "cuda_peak_mb",
    ] + sorted({k for r in rows for k in r if k.startswith("param:")})
    with open(folder.file(folder.TRIALS_CSV), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({**r, "fold_scores": json.dumps(r["fold_scores"])} for r in rows)
    folder.file(folder.TRIALS_JSON).write_text(json.dumps(rows, indent=2))


def format_table(result: SweepResult) -> str:
    """The trial table for the terminal (a parameter a trial did not sample shows as -)."""
    params = sorted({k for t in result.trials for k in t.params})
    header = ["trial", *params, "cv mean ± std", "folds", "status"]
    rows = []
    for t in result.trials:
        score = f"{t.cv_mean:.4f} ± {t.cv_std:.4f}" if t.cv_mean is not None else "-"
        status = t.status.value + (" (finished after stop)" if t.finished_after_stop else "")
        status += f": {t.error}" if t.error else ""
        status += f" at {t.diverged_at}" if t.diverged_at else ""
        rows.append(
            [
                t.trial_id,
                *[_short(t.params.get(p, "-")) for p in params],
                score,
                str(t.folds_done),
                status,
            ]
        )
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in [header, *rows]]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
