"""What crosses from the sweep's driver to the processes that train its trials, typed and frozen:
`SweepInputs`, what every trial of a sweep gets (through `tune.with_parameters`, in Ray's object
store), and `TrialJob`, what one trial's folds run from (in its Tune trial actor, or in each rank
of its Ray Train worker group).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sft_tune.config import RunConfig
from sft_tune.sweep.encodings import SharedData
from sft_tune.sweep.faults import TrialFaults
from sft_tune.sweep.space import Resources


@dataclass(frozen=True)
class SweepInputs:
    """Every trial's inputs: the base config its parameters go into, what each trial holds, the
    metric, the encoded data, where Train and Tune keep their files, the testing hooks, and (for
    the Tuner that finishes stopped trials) each such trial's parameters and last checkpoint."""

    base: dict[str, Any]
    resources: Resources
    metric: str
    data: SharedData
    train_storage: str
    experiment: str
    faults: TrialFaults = TrialFaults()
    finish: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class TrialJob:
    """One trial: its id, its whole run config, the data and metric, the testing hooks, the
    checkpoint a finishing trial goes on from, and the folder where Tune keeps its fold
    checkpoints on the storage."""

    trial_id: str
    run_config: RunConfig
    data: SharedData
    metric: str
    faults: TrialFaults = TrialFaults()
    resume_from: str | None = None
    trial_folder: str | None = None
