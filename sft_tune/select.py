"""`sft-tune select`: retrain the best trial of a sweep on all labelled data, test it, export it.

The best trial is the COMPLETE one with the best CV mean; ties go to the lower standard deviation,
then to the lower trial id (so a rerun picks the same trial). Both phases are retrained with the
same hyperparameters on the whole labelled training file (no validation split), the test file is
evaluated, and `SWEEP_DIR/best_model` is written atomically, by the export of `sft-tune train`
(`core.export.write_atomically`): a Hugging Face folder plus `best.json` (parameters, CV mean and
std, test metrics, sweep id, library versions). A sweep on URI storage is selected from its home
(on any machine that reaches it) and its best model is uploaded there whole, its manifest last.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sft_tune.config import RunConfig
from sft_tune.core.export import library_versions
from sft_tune.core.files import RawData, data_problems
from sft_tune.errors import InputError, fail
from sft_tune.runconfig import parse_config
from sft_tune.sweep.cluster import stop_ray
from sft_tune.sweep.folder import SweepFolder
from sft_tune.sweep.ranking import best_trial, choice_text, phase1_verdict
from sft_tune.sweep.records import read_trials
from sft_tune.sweep.space import Sweep
from sft_tune.tasks import task_files

log = logging.getLogger(__name__)


@dataclass
class CheckedSelection:
    """The best trial of a sweep and its retraining config, with the data files read and
    checked: what `select_best` needs before torch loads."""

    folder: SweepFolder
    sweep: Sweep
    best: dict[str, Any]
    config: RunConfig
    data: RawData


def check_selection(
    sweep_dir: str | Path | SweepFolder, data_dir: Path | None = None, on_ray: bool = False
) -> CheckedSelection:
    """A finished sweep's best COMPLETE trial and its config for retraining on all labelled data
    (its data files read and checked again: they may have changed since; `data_dir`: where they
    are now, see `folder.repoint_data`). `sweep_dir`: its folder, or its home on URI storage;
    `on_ray`: the retrain will run as a Ray task (which needs URI storage)."""
    folder = (
        sweep_dir
        if isinstance(sweep_dir, SweepFolder)
        else SweepFolder.open(sweep_dir, "SWEEP_DIR")
    )
    folder.require_results("select")
    if on_ray and not folder.remote:
        raise fail(
            "--on-ray",
            str(folder.path),
            "a retrain on Ray runs on another node, which hands the model back through the "
            "sweep's URI storage; this sweep's storage is a local folder",
            "drop --on-ray (retrain here), or run sweeps that should retrain on the cluster with "
            "search.storage_path s3://...",
        )
    if data_dir is not None and not Path(data_dir).is_dir():
        raise fail(
            "--data-dir",
            str(data_dir),
            "must be an existing folder (the one holding the sweep's data files now)",
            "pass the folder that holds the data files, or drop --data-dir to read them where "
            "the sweep ran",
        )
    sweep = folder.load_sweep(data_dir)
    best = best_trial(sweep, read_trials(folder))
    if best is None:
        raise fail(
            str(folder.file(folder.TRIALS_JSON)),
            "no COMPLETE trial",
            "selection needs at least one trial that finished all folds",
            "resume the sweep (`sft-tune search --resume DIR`) or run more trials",
        )
    raw = best["config"]
    # All labelled data trains the final model; early stopping keeps its validation split.
    keep_split = raw.get("phase2", {}).get("early_stopping_patience", 0) > 0
    raw = {
        **raw,
        "data": {
            **raw["data"],
            "validation_fraction": raw["data"].get("validation_fraction", 0.1)
            if keep_split
            else 0.0,
        },
        "output_dir": str(folder.path),
    }
    config = parse_config(raw)
    data, problems = data_problems(config, task_files(config.model.task))
    if problems:
        raise InputError(problems, title=f"{folder.path}: the best configuration's data")
    return CheckedSelection(folder, sweep, best, config, data)


def select_best(
    sweep_dir: str | Path | SweepFolder,
    use_wandb: bool = True,
    progress: bool = True,
    checked: CheckedSelection | None = None,
    on_ray: bool = False,
    address: str | None = None,
) -> dict[str, Any]:
    """Pick, retrain, test and export the best configuration of a finished sweep (`checked`:
    what `check_selection` found, else it is called). `on_ray`: the retraining runs as a Ray task
    holding one trial worker's CPUs and GPUs (so on a GPU node of the cluster at `address`, or
    of the one this process is attached to), which uploads the model to the sweep's URI storage;
    the model is then brought down here."""
    from sft_tune.run import train
    from sft_tune.sweep.tracking import log_best_model

    checked = checked or check_selection(sweep_dir)
    folder, sweep, best, config = checked.folder, checked.sweep, checked.best, checked.config
    summary = {
        "sweep_id": sweep.search.name,
        "sweep_dir": str(folder.path),
        "trial_id": best["trial_id"],
        "params": best["params"],
        "metric": best["metric"],
        "cv_mean": best["cv_mean"],
        "cv_std": best["cv_std"],
        "fold_scores": best["fold_scores"],
        "choice": best["choice"],
        "phase1": phase1_verdict(sweep, read_trials(folder), best["choice"]),
        "versions": library_versions(),
    }
    log.info(
        "best trial %s: %s %.4f ± %.4f; %s; retraining on all labelled data",
        best["trial_id"],
        best["metric"],
        best["cv_mean"],
        best["cv_std"],
        choice_text(best["choice"], best["metric"]),
    )
    if on_ray:
        metrics = _retrain_on_ray(checked, summary, address)
        summary["retrained_on"] = metrics["retrained_on"]
    else:
        metrics = train(
            config,
            progress=progress,
            model_dir=folder.file(folder.BEST_MODEL),
            extra_files={folder.BEST: summary},
            raw=checked.data,
        )
    summary["test"] = metrics.get("test")
    summary["model_dir"] = metrics["model_dir"]
    summary["wandb_artifact"] = log_best_model(
        sweep.search.wandb_project,
        sweep.search.name,
        folder,
        Path(metrics["model_dir"]),
        summary,
        enabled=use_wandb,
    )
    if folder.remote:  # the model whole (its manifest last), then the W&B run that logged it
        if not on_ray:  # (a Ray task uploaded it already)
            folder.push_model()
        folder.sync([folder.WANDB], strict=True)
        summary["model_uri"] = f"{folder.experiment}/{folder.BEST_MODEL}"
    return summary


def task_resources(resources) -> dict[str, float]:
    """One trial worker's CPUs and GPUs (a DDP trial's retrain runs in one process, on one GPU)."""
    gpus = (
        resources.gpus_per_worker if resources.workers == 1 else min(resources.gpus_per_worker, 1)
    )
    return {"num_cpus": resources.cpus_per_worker, "num_gpus": gpus}


def _retrain_on_ray(checked: CheckedSelection, summary: dict[str, Any], address: str | None):
    """The retraining as a Ray task: it exports and uploads the model to the sweep's home, then
    the model folder is brought down into this sweep folder."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, log_to_driver=True)
    try:
        resources = task_resources(checked.sweep.search.resources)
        task = ray.remote(**resources)(_retrain_task)
        folder = checked.folder
        metrics = ray.get(
            task.remote(checked.config.model_dump(mode="json"), summary, checked.data, folder)
        )
    finally:
        if started:
            stop_ray()
    folder.home.pull_model(folder.BEST_MODEL)
    return {**metrics, "model_dir": str(folder.file(folder.BEST_MODEL))}


def _retrain_task(config: dict[str, Any], summary: dict[str, Any], raw, folder: SweepFolder):
    """In a Ray task: retrain, export into a temporary folder, upload it whole to the sweep's
    home (its manifest last); returns the metrics and where it ran."""
    import os
    import tempfile

    import ray

    from sft_tune.run import train
    from sft_tune.sweep.storage import Home

    with tempfile.TemporaryDirectory(prefix="sft-tune-select-") as here:
        run = RunConfig.model_validate({**config, "output_dir": here})
        metrics = train(
            run,
            progress=False,
            model_dir=Path(here) / folder.BEST_MODEL,
            extra_files={folder.BEST: summary},
            raw=raw,
        )
        Home(folder.experiment, Path(here)).push_model(folder.BEST_MODEL)
    where = {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}
    return {**metrics, "retrained_on": where}
