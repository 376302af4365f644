"""What each trial of a sweep did: the `Trial` record (trials.json, trials.csv) built from Tune's
results or read back, how a trial ended and its error text, and the terminal table. Which trial is
best lives in `ranking.py`; the summary a sweep ends with in `results.py`."""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from sft_tune.sweep.folder import SweepFolder, fold_checkpoint, with_scheme
from sft_tune.sweep.space import Sweep

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
        # Tune fills in its own `trial_id`; a trial that finishes a stopped one reports that one's
        # id.
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
    """Tune names trial folders `<trainable>_<trial id>_<n>_...`; the trainable here is
    run_trial."""
    return Path(path).name.removeprefix("run_trial_").split("_")[0]


def read_trials(folder: SweepFolder) -> list[Trial]:
    return [Trial.from_row(row) for row in folder.trials()]


# -- files and the table ---------------------------------------------------------------------------


def write_trials(folder: SweepFolder, trials: list[Trial]) -> None:
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
