"""When Tune saves its experiment state (through `compat.experiment_saves_only_when`, the one
place that touches Ray's `_ExperimentCheckpointManager`).

A resumed sweep must never launch again a trial that ended, so Tune's state must be saved as soon
as a trial starts, reports a fold or ends. Tune saves at most every `TUNE_GLOBAL_CHECKPOINT_S`
seconds (10 by default), at the end of a controller step; with a period of 0 it saves at every
step, about ten times a second while the trials train, which cost about 1.5 s per 15-s trial on
2 cores. Here the period is 0 but a step's save is skipped unless something the state records
changed since the last save (`mark_changed`, called by the sweep's `TrialEvents` callback, which
Tune runs inside the step before it saves): the same guarantee, a save per event instead of per
step."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

PERIOD_ENV = "TUNE_GLOBAL_CHECKPOINT_S"  # seconds between saves of Tune's state
_changed = threading.Event()


def mark_changed() -> None:
    """A trial started, reported a fold or ended: the next step end saves Tune's state."""
    _changed.set()


@contextlib.contextmanager
def saved_when_changed(wanted: bool) -> Iterator[None]:
    """While the Tuners run (`wanted`: local storage, where a save is a file write; on URI
    storage each save is an upload, so Tune's default period stays): Tune's state is saved at
    the end of every step in which a trial started, reported or ended, and at no other step. A
    period the user set is kept, and then Tune saves as it would."""
    if not wanted or PERIOD_ENV in os.environ:
        yield
        return
    from sft_tune.compat import experiment_saves_only_when

    os.environ[PERIOD_ENV] = "0"  # read when a Tuner's controller starts
    _changed.set()  # the first step saves (the new trials)
    try:
        with experiment_saves_only_when(_changed.is_set, _changed.clear):
            yield
    finally:
        os.environ.pop(PERIOD_ENV, None)
