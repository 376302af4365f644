"""What a person sees while a sweep runs: one sft-tune progress view, and everything else in the
sweep folder's log file.

Ray, Tune, Train, transformers and the trials write a lot (status tables, INFO logs, result
dumps, error-level lines of harmless teardowns). During a sweep this process's stdout and stderr
go to `SWEEP_DIR/sweep.log` (with `verbose`, to the terminal as well); the terminal shows the
`ProgressView` lines and sft-tune's own log messages.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from ray import tune

from sft_tune.sweep.folder import FINISH_KEY, new_fold
from sft_tune.sweep.records import end_status, trial_error_text


@contextlib.contextmanager
def sweep_console(log_path: Path, verbose: bool = False) -> Iterator[TextIO]:
    """Send file descriptors 1 and 2 (Ray's processes, C++ logs) and Python's stdout and stderr to
    `log_path`, with `verbose` to the terminal too; yield the stream for the progress view: the
    terminal, or the caller's own stderr when that is not file descriptor 2 (a notebook, pytest)."""
    sys.stdout.flush()
    sys.stderr.flush()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    streams = sys.stdout, sys.stderr
    saved = os.dup(1), os.dup(2)
    own_terminal = _is_fd(sys.stderr, 2)
    terminal = os.fdopen(os.dup(saved[1]), "w", buffering=1) if own_terminal else sys.stderr
    log_file = open(log_path, "ab")
    handler = None
    if verbose:
        read_end, write_end = os.pipe()
        threading.Thread(target=_tee, args=(read_end, log_file, saved[1]), daemon=True).start()
        target = write_end
    else:
        target = log_file.fileno()
        # sft-tune's own messages still reach the terminal (without verbose they would go only
        # to the log, with the root logger's handler).
        handler = logging.StreamHandler(terminal)
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logging.getLogger("sft_tune").addHandler(handler)
    os.dup2(target, 1)
    os.dup2(target, 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    try:
        yield terminal
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
            stream.close()
        sys.stdout, sys.stderr = streams
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        if verbose:
            os.close(target)  # the copier ends when no process holds the pipe any more
        if handler is not None:
            logging.getLogger("sft_tune").removeHandler(handler)
        if own_terminal:
            terminal.close()
        if not verbose:
            log_file.close()


def _is_fd(stream: TextIO, fd: int) -> bool:
    try:
        return stream.fileno() == fd
    except (AttributeError, OSError, ValueError):  # a notebook's or a test's stream
        return False


def _tee(read_end: int, log_file, terminal_fd: int) -> None:
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        while chunk := pipe.read(65536):
            log_file.write(chunk)
            log_file.flush()
            try:
                os.write(terminal_fd, chunk)
            except OSError:
                pass  # the terminal went away; the log keeps everything


class ProgressView(tune.Callback):
    """One line per event of the sweep: a trial starts (its parameters), finishes a fold (score,
    running mean), ends (status); after each, where the sweep stands and an ETA (an upper bound:
    it assumes every remaining trial runs all its folds, which early stopping shortens)."""

    def __init__(
        self,
        num_trials: int,
        folds: int,
        metric: str,
        stream: TextIO | None = None,
        storage_path: str = "",
    ) -> None:
        self.num_trials, self.folds, self.metric = num_trials, folds, metric
        self.storage_path = (
            storage_path  # the sweep's: error.txt paths on URI storage get their scheme
        )
        self.__setstate__(self.__getstate__())
        self.stream = stream

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its callbacks with the sweep's state: the settings, not the terminal."""
        return {
            "num_trials": self.num_trials,
            "folds": self.folds,
            "metric": self.metric,
            "storage_path": self.storage_path,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({"storage_path": "", **state})
        self.stream = None
        self.numbers: dict[str, int] = {}  # sweep trial id -> 1-based number in start order
        self.status: dict[str, str] = {}
        self.folds_done = 0
        self.finish_total = 0  # stopped trials to finish after the search (set by the sweep)
        self.finished = 0
        self.started = time.monotonic()

    def say(self, line: str) -> None:
        if self.stream is not None:
            print(
                f"[{_clock(time.monotonic() - self.started)}] {line}", file=self.stream, flush=True
            )

    def _label(self, trial) -> str:
        key = trial.config.get(FINISH_KEY) or trial.trial_id
        number = self.numbers.setdefault(key, len(self.numbers) + 1)
        return f"trial {number} ({key})"

    def on_trial_start(self, iteration: int, trials: list, trial, **info: Any) -> None:
        if FINISH_KEY in trial.config:
            self.say(
                f"{self._label(trial)} finishing: the scheduler stopped it, its partial mean is "
                "in the running"
            )
            return
        params = "  ".join(f"{k}={_short(v)}" for k, v in trial.config.items())
        self.say(f"{self._label(trial)} started: {params or 'base config'}")

    def on_trial_result(
        self, iteration: int, trials: list, trial, result: dict, **info: Any
    ) -> None:
        if not new_fold(result):
            return
        self.folds_done += 1
        self.say(
            f"{self._label(trial)} fold {result['fold']}/{self.folds}: {self.metric} "
            f"{result['fold_score']:.4f}, running mean {result['cv_mean']:.4f} ± "
            f"{result['cv_std']:.4f}"
        )

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self.finished += FINISH_KEY in trial.config
        done = (trial.last_result or {}).get("folds_done", 0)
        mean = (trial.last_result or {}).get("cv_mean")
        status = end_status(trial.last_result, self.folds).value
        self.status[self._label(trial)] = status
        score = (
            f": CV {self.metric} {mean:.4f} ± {trial.last_result['cv_std']:.4f}"
            if mean is not None
            else ""
        )
        ended = {
            "STOPPED": f"stopped by the scheduler after {done}/{self.folds} folds",
            "DIVERGED": f"DIVERGED in fold {done}/{self.folds} (a loss or score was NaN or "
            "infinite): it ranks after every finite trial",
        }.get(status, f"complete ({done} folds)")
        self.say(f"{self._label(trial)} {ended}{score}")
        self._where(trials)

    def on_trial_recover(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self.say(
            f"{self._label(trial)} failed ({_error_line(trial, self.storage_path)}); retrying "
            "from its last finished fold"
        )

    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self.finished += FINISH_KEY in trial.config
        self.status[self._label(trial)] = "ERROR"
        self.say(f"{self._label(trial)} ERROR: {_error_line(trial, self.storage_path)}")
        self._where(trials)

    def _where(self, trials: list) -> None:
        ended = len(self.status)
        counts = ", ".join(
            f"{sum(s == status for s in self.status.values())} {status.lower()}"
            for status in ("COMPLETE", "STOPPED", "DIVERGED", "ERROR")
            if status in self.status.values()
        )
        elapsed = time.monotonic() - self.started
        finishing = (
            f"; {self.finished}/{self.finish_total} stopped trial(s) finished"
            if self.finish_total
            else ""
        )
        left = max(self.num_trials - ended, 0) + self.finish_total - self.finished
        eta = ""
        if left and self.folds_done:
            per_fold = elapsed / self.folds_done
            eta = f", ETA at most {_clock(per_fold * left * self.folds)}"
        self.say(
            f"sweep: {ended}/{self.num_trials} trials ended ({counts}){finishing}, "
            f"{self.folds_done} folds trained in {_clock(elapsed)}{eta}"
        )


def _error_line(trial, storage_path: str = "") -> str:
    """The exception of a failed trial in one line (`results.trial_error_text`)."""
    return trial_error_text(trial, storage_path) or "see the trial's error.txt"


def _clock(seconds: float) -> str:
    seconds = max(0, int(math.ceil(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
