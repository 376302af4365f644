"""The Tuner of a sweep: the trainable, the searcher, the scheduler and the callbacks, put together
for a new sweep or a restored one.

Each Tune trial is a function trainable that launches one Ray Train `TorchTrainer` running all
folds (`folds.worker_loop`); the trainer's `TuneReportCallback` turns each fold's report into one
Tune result, so ASHA can stop a trial between folds.
"""

from __future__ import annotations

import os
from typing import Any

from sft_tune.config import parse_config
from sft_tune.space import Sweep, with_params
from sft_tune.sweep.cluster import CONTROLLER_FAILURE_LIMIT, TRIAL_CPU
from sft_tune.sweep.folder import SweepFolder
from sft_tune.sweep.folds import FAULT_FILE_ENV
from sft_tune.sweep.searcher import TUNE_METRIC, make_searcher
from sft_tune.sweep.tracking import WandbTrialCallback


def run_trial(params: dict[str, Any], shared: dict[str, Any]) -> None:
    """Tune function trainable: one TorchTrainer run holding every fold of this configuration."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from sft_tune.sweep.folds import worker_loop

    config = parse_config(with_params(shared["base"], params))
    trial_id = tune.get_context().get_trial_id()
    resources = shared["resources"]
    use_gpu = resources["gpus_per_worker"] > 0
    per_worker = {"CPU": resources["cpus_per_worker"], **({"GPU": resources["gpus_per_worker"]} if use_gpu else {})}
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={"run_config": config.model_dump(mode="json"), "data_ref": shared["data_ref"], "metric": shared["metric"], "trial_id": trial_id, "event_log": shared["event_log"], "fault_file": shared["fault_file"]},
        scaling_config=ray.train.ScalingConfig(num_workers=resources["workers"], use_gpu=use_gpu, resources_per_worker=per_worker),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=ray.train.RunConfig(
            name=f"train-{trial_id}",
            storage_path=shared["train_storage"],
            callbacks=[TuneReportCallback()],
            # Crashes are retried by Tune (max_failures) from the last fold checkpoint; a worker
            # group that cannot be placed fails after a few start timeouts instead of hanging.
            failure_config=ray.train.FailureConfig(max_failures=0, controller_failure_limit=CONTROLLER_FAILURE_LIMIT),
        ),
    )
    trainer.fit()


def make_tuner(sweep: Sweep, folder: SweepFolder, data, restoring: bool, use_wandb: bool, max_concurrent: int | None = None):
    """A Tuner for a new sweep, or the restored Tuner of an interrupted one."""
    import ray
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    settings = sweep.search
    shared = {
        "base": sweep.base,
        "resources": settings.resources.model_dump(),
        "metric": settings.metric,
        "data_ref": [ray.put(data)],
        "train_storage": folder.train_storage,
        "event_log": str(folder.file(folder.EVENTS)),
        "fault_file": os.environ.get(FAULT_FILE_ENV),
    }
    trainable = tune.with_resources(tune.with_parameters(run_trial, shared=shared), {"cpu": TRIAL_CPU})
    search_alg = ConcurrencyLimiter(make_searcher(sweep, folder.optuna_url(settings.optuna_storage), restoring), max_concurrent=max_concurrent or settings.max_concurrent)
    scheduler = _scheduler(settings.scheduler, settings.folds)
    callbacks = [WandbTrialCallback(settings.wandb_project, settings.name, folder, list(sweep.params), settings.folds, enabled=use_wandb)]
    if restoring:
        tuner = tune.Tuner.restore(folder.experiment, trainable=trainable, resume_unfinished=True, resume_errored=True)
        _replace_pickled_parts(tuner, search_alg, scheduler, callbacks)
        return tuner
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(metric=TUNE_METRIC, mode=settings.mode, search_alg=search_alg, scheduler=scheduler, num_samples=settings.num_trials),
        run_config=tune.RunConfig(
            name=folder.name,
            storage_path=folder.experiment.rsplit("/", 1)[0],
            failure_config=tune.FailureConfig(max_failures=settings.max_failures),
            callbacks=callbacks,
            verbose=1,
        ),
    )


def _replace_pickled_parts(tuner, search_alg, scheduler, callbacks) -> None:
    """`Tuner.restore` unpickles the searcher, scheduler and callbacks the sweep started with, which
    point at the folder where it started; use the ones made for where it is now. The searcher's
    saved state is still loaded into the new one (`FoldAwareOptunaSearch.restore`); Tune keeps no
    scheduler state, and the callbacks keep none across a restore. Ray has no public accessor for
    a restored Tuner's configs (ray-project/ray#41364)."""
    internal = tuner._local_tuner
    internal._tune_config.search_alg = search_alg
    internal._tune_config.scheduler = scheduler
    internal.get_run_config().callbacks = callbacks


def _scheduler(name: str, folds: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

    if name == "asha":
        # max_t one past the last fold: a trial that reaches its last fold ends by itself (a clean
        # Train teardown) instead of being stopped by the scheduler at the same moment.
        return ASHAScheduler(time_attr="training_iteration", max_t=folds + 1, grace_period=1, reduction_factor=2)
    if name == "median":
        return MedianStoppingRule(time_attr="training_iteration", grace_period=1, min_samples_required=2)
    return FIFOScheduler()
