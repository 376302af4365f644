"""`sft-tune search`: check everything, prepare the data once, run the Tuner, write the results."""

from __future__ import annotations

import os
from pathlib import Path

from sft_tune.errors import fail
from sft_tune.space import Sweep, load_space
from sft_tune.sweep.cluster import concurrency, start_ray
from sft_tune.sweep.folder import SweepFolder
from sft_tune.sweep.results import SweepResult, summarize


def prepare(space_path: Path | None = None, resume: Path | None = None) -> tuple[Sweep, SweepFolder]:
    """Load and check the sweep (a new space file, or the snapshot of a sweep to resume)."""
    if resume is None:
        sweep = load_space(space_path)
        folder = SweepFolder.of(sweep.search)
        if folder.holds_sweep():
            raise fail("search.name", sweep.search.name, f"the sweep folder {folder.path} already holds a sweep", f"resume it with `sft-tune search --resume {folder.path}`, or pick another search.name")
        return sweep, folder
    folder = SweepFolder(Path(resume))
    if not folder.holds_sweep():
        raise fail("--resume", str(resume), f"must be a sweep folder holding {SweepFolder.SNAPSHOT}", "pass the folder printed by the interrupted `sft-tune search`")
    sweep = folder.load_sweep()
    folder = SweepFolder.of(sweep.search)
    from ray import tune

    if not tune.Tuner.can_restore(folder.experiment):
        raise fail("--resume", str(resume), "the sweep never got as far as saving Ray Tune state, so there is nothing to resume", f"delete {resume} and start the sweep again with --space")
    return sweep, folder


def run_search(space_path: Path | None = None, resume: Path | None = None, address: str | None = None, use_wandb: bool = True) -> SweepResult:
    """Run (or resume) a sweep; every input is checked before Ray starts."""
    import logging

    from sft_tune.sweep.folds import prepare_sweep_data
    from sft_tune.sweep.tuner import make_tuner

    sweep, folder = prepare(space_path, resume)
    if resume is not None and (was := folder.moved_from()) is not None:
        logging.getLogger(__name__).info("sweep folder moved from %s; resuming it at %s", was, folder.path)
    data = prepare_sweep_data(sweep.base_config, sweep.search.folds, sweep.search.seed)
    import ray

    started = start_ray(sweep, address)
    try:
        if resume is None:  # written once Ray is up, so a failed start leaves no half-made sweep
            folder.save_snapshot(sweep)
        tuner = make_tuner(sweep, folder, data, resume is not None, use_wandb, concurrency(sweep, remote=bool(address or os.environ.get("RAY_ADDRESS"))))
        results = tuner.fit()
        return summarize(sweep, folder, results, data.tokenization_passes)
    finally:
        if started:
            ray.shutdown()
