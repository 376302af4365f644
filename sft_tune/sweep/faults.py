"""Testing hooks that make a sweep fail on purpose, in one place, so the fault tests can check
what a sweep keeps and redoes. Each is an environment variable read on the driver; nothing here
acts unless a test sets one.

- `SFT_TUNE_FAULT_FILE=PATH` (a path that does not exist yet): the first fold of the next trial
  to start creates the file and raises, to check retries.
- `SFT_TUNE_KILL_AFTER_LAST_FOLD=PATH`: the process of the next trial to finish its last fold
  creates the file and kills itself (SIGKILL) right after that fold's report, to check that such a
  trial stays complete.
- `SFT_TUNE_KILL_DRIVER_AFTER_SUGGESTION=N`, `..._AFTER_END=N`, `..._AFTER_FOLD=N`: the driver
  kills itself right after its N-th suggestion (before Tune saves that trial in its experiment
  state), the N-th trial end or the N-th fold it records in events.jsonl (before Tune saves it).
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

FAULT_FILE_ENV = "SFT_TUNE_FAULT_FILE"
KILL_AFTER_LAST_FOLD_ENV = "SFT_TUNE_KILL_AFTER_LAST_FOLD"
KILL_DRIVER_AFTER_SUGGESTION_ENV = "SFT_TUNE_KILL_DRIVER_AFTER_SUGGESTION"
KILL_DRIVER_AFTER_END_ENV = "SFT_TUNE_KILL_DRIVER_AFTER_END"
KILL_DRIVER_AFTER_FOLD_ENV = "SFT_TUNE_KILL_DRIVER_AFTER_FOLD"

# How often the driver passed each of its hooks (read when used, never saved).
_driver_counts = {
    KILL_DRIVER_AFTER_SUGGESTION_ENV: 0,
    KILL_DRIVER_AFTER_END_ENV: 0,
    KILL_DRIVER_AFTER_FOLD_ENV: 0,
}


@dataclass(frozen=True)
class TrialFaults:
    """The trial-side hooks, read on the driver and handed to every trial with its job."""

    fault_file: str | None = None
    kill_after_last_fold: str | None = None

    @classmethod
    def from_environ(cls) -> TrialFaults:
        return cls(os.environ.get(FAULT_FILE_ENV), os.environ.get(KILL_AFTER_LAST_FOLD_ENV))

    def before_fold(self) -> None:
        """Raise once, in the first fold to start after the hook was set."""
        if self.fault_file and not os.path.exists(self.fault_file):
            Path(self.fault_file).write_text("injected fault\n")
            raise RuntimeError(f"injected fault ({FAULT_FILE_ENV}={self.fault_file})")

    def after_last_fold(self, rank: int) -> None:
        """Kill this process once, after a trial's last fold was reported (rank 0 only)."""
        path = self.kill_after_last_fold
        if path and rank == 0 and not os.path.exists(path):
            Path(path).write_text("killed after the last fold\n")
            os.kill(os.getpid(), signal.SIGKILL)


def maybe_kill_driver(hook: str) -> None:
    """The driver kills itself when it passes `hook` for the N-th time, N the hook's value."""
    _driver_counts[hook] += 1
    if os.environ.get(hook) == str(_driver_counts[hook]):
        os.kill(os.getpid(), signal.SIGKILL)
