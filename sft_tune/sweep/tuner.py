"""The Tuners of a sweep: the trainable, the searcher, the scheduler and the callbacks, put
together for a new sweep or a restored one, and the second Tuner that finishes stopped trials.

Each Tune trial is the function trainable `run_trial`, which runs every fold of one
configuration: in the trial actor itself for a 1-worker trial (`tune.with_resources` holds the
worker's CPUs and GPUs, and `reuse_actors` lets the next trial keep the actor's imports, data and
model), or through one Ray Train `TorchTrainer` for a multi-worker (DDP) trial, whose
`TuneReportCallback` turns each fold's report into one Tune result. Either way each fold is one
Tune result, so ASHA can stop a trial between folds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ray import tune

from sft_tune.compat import RestoredLimiter, replace_restored_parts, trial_actor
from sft_tune.runconfig import parse_config, with_params
from sft_tune.sweep.cluster import CONTROLLER_FAILURE_LIMIT, in_actor, trial_resources
from sft_tune.sweep.contract import SweepInputs, TrialJob
from sft_tune.sweep.encodings import SharedData
from sft_tune.sweep.faults import (
    KILL_DRIVER_AFTER_END_ENV,
    KILL_DRIVER_AFTER_FOLD_ENV,
    TrialFaults,
    maybe_kill_driver,
)
from sft_tune.sweep.folder import (
    FINISH_EXPERIMENT,
    FINISH_KEY,
    EventLog,
    SweepFolder,
    last_fold_state,
    new_fold,
)
from sft_tune.sweep.folds import ddp_worker, run_in_actor
from sft_tune.sweep.records import all_folds_done, end_status
from sft_tune.sweep.searcher import (
    TUNE_METRIC,
    make_searcher,
)
from sft_tune.sweep.space import Resources, Sweep
from sft_tune.sweep.storage import join, listing, read_text, write_text
from sft_tune.sweep.strategy import make_scheduler
from sft_tune.sweep.tunestate import mark_changed

ACTOR_ANSWER_S = 30  # how long the driver waits for a started trial actor to give its PID


def run_trial(config: dict[str, Any], shared: SweepInputs) -> None:
    """Tune function trainable: every fold of one configuration (`config` holds the searched
    parameters, or FINISH_KEY: the id of a stopped trial to finish from its last fold)."""
    tune_id = tune.get_context().get_trial_id()
    if FINISH_KEY in config:
        stopped = shared.finish[config[FINISH_KEY]]
        trial_id, params, resume_from = config[FINISH_KEY], stopped["params"], stopped["checkpoint"]
    else:
        trial_id, params, resume_from = tune_id, config, None
    job = TrialJob(
        trial_id=trial_id,
        run_config=parse_config(with_params(shared.base, params)),
        data=shared.data,
        metric=shared.metric,
        faults=shared.faults,
        resume_from=resume_from,
        # where Tune keeps this trial's fold checkpoints on the storage
        trial_folder=join(shared.experiment, Path(tune.get_context().get_trial_dir()).name),
    )
    resources = shared.resources
    if resources.workers == 1:
        run_in_actor(job, resources.cpus_per_worker)
    else:
        _run_ddp(job, resources, shared.train_storage, tune_id)


def _run_ddp(job: TrialJob, resources: Resources, storage: str, tune_id: str) -> None:
    """The folds through one TorchTrainer run, named after the Tune trial: a retried or restored
    trial resumes its Train run from the last fold checkpoint."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    use_gpu = resources.gpus_per_worker > 0
    per_worker = {
        "CPU": resources.cpus_per_worker,
        **({"GPU": resources.gpus_per_worker} if use_gpu else {}),
    }
    trainer = TorchTrainer(
        ddp_worker,
        train_loop_config={"job": job},
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources.workers, use_gpu=use_gpu, resources_per_worker=per_worker
        ),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=ray.train.RunConfig(
            name=f"train-{tune_id}",
            storage_path=storage,
            callbacks=[TuneReportCallback()],
            # Crashes are retried by Tune (max_failures) from the last fold checkpoint; a worker
            # group that cannot be placed fails after a few start timeouts instead of hanging.
            failure_config=ray.train.FailureConfig(
                max_failures=0, controller_failure_limit=CONTROLLER_FAILURE_LIMIT
            ),
        ),
    )
    trainer.fit()


class TrialEvents(tune.Callback):
    """Tune callback: the driver's record of every trial in events.jsonl. Each start of a trial
    process (a new, reused, retried or restored actor; not a restored trial that only hands back
    its saved final result), each fold result as the driver receives it (so after its checkpoint
    is persisted), and each trial's end with its status. A trial cut short by the end of the
    driver has no end. Only the driver writes the sweep's files: a trial on another node reaches
    them through its Tune results. `started`: the folds already done by the stopped trials that
    the finishing experiment goes on with (by trial id)."""

    def __init__(
        self, folder: SweepFolder, folds: int, started: dict[str, int] | None = None
    ) -> None:
        self.folder, self.folds, self.started = folder, folds, started or {}

    def _log(self, trial, event: str, **fields: Any) -> None:
        mark_changed()  # Tune's state saves at the end of this step (`tunestate`)
        EventLog(
            str(self.folder.file(self.folder.EVENTS)),
            trial.config.get(FINISH_KEY) or trial.trial_id,
            enabled=True,
        ).write(event, **fields)
        # With URI storage the record goes up at once (one small file): the events on the
        # storage always match the fold checkpoints there, whatever happens to this machine.
        self.folder.sync([self.folder.EVENTS])

    def on_trial_start(self, iteration: int, trials: list, trial, **info: Any) -> None:
        last = trial.last_result or {}
        if all_folds_done(last, self.folds) or last.get("diverged"):
            return  # a restored trial that only replays its final result: it trains nothing
        key = trial.config.get(FINISH_KEY) or trial.trial_id
        done = int(last.get("folds_done", 0)) or self.started.get(key, 0)
        ip, pid = actor_ip_pid(trial)
        self._log(trial, "start", fold=done + 1, trial_pid=pid, trial_ip=ip)

    def on_trial_result(
        self, iteration: int, trials: list, trial, result: dict, **info: Any
    ) -> None:
        if new_fold(result):
            self._log(
                trial,
                "fold",
                fold=result["fold"],
                score=result["fold_score"],
                trial_pid=result.get("pid"),
                nodes=json.loads(result.get("nodes") or "null"),
            )
            self._kill_hook(KILL_DRIVER_AFTER_FOLD_ENV)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._log(trial, "end", status=end_status(trial.last_result, self.folds).value)
        self._sync()
        self._kill_hook(KILL_DRIVER_AFTER_END_ENV)

    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        # A trial whose process died after its last fold is complete.
        complete = all_folds_done(trial.last_result, self.folds)
        self._log(trial, "end", status="COMPLETE" if complete else "ERROR")
        self._sync()

    def _kill_hook(self, hook: str) -> None:
        """Testing hooks: the driver dies here, once what it queued for the storage is there."""
        if os.environ.get(hook) and self.folder.remote:
            self.folder.home.flush()
        maybe_kill_driver(hook)

    def _sync(self) -> None:
        """With URI storage: the study (Tune told the searcher of the trial's end before its
        callbacks), the log and the W&B runs go up to the sweep's home."""
        folder = self.folder
        folder.sync([folder.STUDY, folder.LOG, folder.WANDB])


def actor_ip_pid(trial) -> tuple[str | None, int | None]:
    """The IP address and PID of a started trial's actor (Tune's `Trainable.get_current_ip_pid`;
    the actor is idle until Tune hands it the trial's first step), (None, None) if it does not
    answer."""
    import ray

    actor = trial_actor(trial)
    try:
        return tuple(ray.get(actor.get_current_ip_pid.remote(), timeout=ACTOR_ANSWER_S))
    except Exception:  # a dead or unreachable actor: Tune reports its failure itself
        return None, None


def shared_inputs(
    sweep: Sweep, folder: SweepFolder, data: SharedData, finish: dict[str, dict] | None = None
) -> SweepInputs:
    """What every trial of the sweep gets (through `tune.with_parameters`, in the object store)."""
    return SweepInputs(
        base=sweep.base,
        resources=sweep.search.resources,
        metric=sweep.search.metric,
        data=data,
        train_storage=folder.train_storage,
        experiment=f"{folder.experiment}/{FINISH_EXPERIMENT}" if finish else folder.experiment,
        faults=TrialFaults.from_environ(),
        finish=finish or {},
    )


def _trainable(sweep: Sweep, shared: SweepInputs):
    return tune.with_resources(
        tune.with_parameters(run_trial, shared=shared), trial_resources(sweep)
    )


def make_tuner(
    sweep: Sweep,
    folder: SweepFolder,
    shared: SweepInputs,
    callbacks: list,
    restoring: bool,
    max_concurrent: int,
):
    """The search's Tuner for a new sweep, or the restored Tuner of an interrupted one."""
    settings = sweep.search
    trainable = _trainable(sweep, shared)
    settled = settle_ended_trials(folder, settings.cv_folds) if restoring else []
    search_alg = RestoredLimiter(
        make_searcher(sweep, folder.optuna_url(settings.optuna_storage), restoring),
        max_concurrent=max_concurrent,
        settled=settled,
    )
    scheduler = make_scheduler(sweep, folder if restoring else None)
    if restoring:
        tuner = tune.Tuner.restore(
            folder.experiment, trainable=trainable, resume_unfinished=True, resume_errored=True
        )
        # Tuner.restore unpickles the searcher, scheduler and callbacks the sweep started with,
        # which point at the folder where it started (and hold no terminal): use the ones made
        # for this run. The searcher's saved state is still loaded into the new one
        # (`StudySearch.restore`); Tune keeps no scheduler state, the callbacks none across a
        # restore.
        replace_restored_parts(tuner, search_alg, scheduler, callbacks)
        return tuner
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=TUNE_METRIC,
            mode=settings.mode,
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=settings.num_trials,
            reuse_actors=in_actor(sweep),
        ),
        run_config=_run_config(sweep, folder.name, folder.experiment.rsplit("/", 1)[0], callbacks),
    )


def settle_ended_trials(
    folder: SweepFolder, folds: int, experiment: str | None = None
) -> list[str]:
    """Trials that ended before the driver was killed, but after Tune last saved its experiment
    state (which then holds them as running, or as failed when their process died after the last
    fold): marked TERMINATED there, with the result of their last fold checkpoint, so that
    `Tuner.restore` does not launch them again. Ended = every fold in its checkpoint, or an end
    event (complete, stopped by the scheduler, or diverged) in events.jsonl. The state is read
    and rewritten where Tune keeps it (the sweep folder, or its home on URI storage). Returns
    their ids."""
    root = experiment or folder.experiment
    states = sorted(
        info.base_name
        for info in listing(root)
        if info.base_name.startswith("experiment_state-") and info.base_name.endswith(".json")
    )
    if not states:
        return []
    path = join(root, states[-1])  # the one Tune restores: the newest
    state = json.loads(read_text(path))
    ended = {e["trial_id"]: e["status"] for e in folder.events() if e["event"] == "end"}
    settled = []
    for entry in state["trial_data"]:
        trial, metadata = json.loads(entry[0]), json.loads(entry[1])
        if trial.get("status") == "TERMINATED":
            continue
        config = trial.get("config") if isinstance(trial.get("config"), dict) else {}
        key = config.get(FINISH_KEY) or trial["trial_id"]
        saved = last_fold_state(join(root, trial.get("relative_logdir", "")))
        complete = saved is not None and len(saved["scores"]) >= folds
        if not complete and ended.get(key) not in ("COMPLETE", "STOPPED", "DIVERGED"):
            continue
        trial["status"] = "TERMINATED"
        if saved is not None:
            metadata["last_result"] = {**(metadata.get("last_result") or {}), **saved["metrics"]}
        entry[0], entry[1] = json.dumps(trial, indent=2), json.dumps(metadata)
        settled.append(key)
    if settled:
        write_text(path, json.dumps(state))
    return settled


def make_finishing_tuner(
    sweep: Sweep,
    folder: SweepFolder,
    shared: SweepInputs,
    callbacks: list,
    trial_ids: list[str],
    max_concurrent: int,
):
    """A Tuner that runs the remaining folds of stopped trials (one Tune trial each, from the
    stopped trial's last fold checkpoint), kept in the sweep folder's `finish` experiment; an
    interrupted one is restored."""
    trainable = _trainable(sweep, shared)
    path = f"{folder.experiment}/{FINISH_EXPERIMENT}"
    if tune.Tuner.can_restore(path):
        settle_ended_trials(folder, sweep.search.cv_folds, path)
        tuner = tune.Tuner.restore(
            path, trainable=trainable, resume_unfinished=True, resume_errored=True
        )
        replace_restored_parts(tuner, callbacks=callbacks)
        return tuner
    return tune.Tuner(
        trainable,
        param_space={FINISH_KEY: tune.grid_search(trial_ids)},
        tune_config=tune.TuneConfig(
            metric=TUNE_METRIC,
            mode=sweep.search.mode,
            num_samples=1,
            max_concurrent_trials=max_concurrent,
            reuse_actors=in_actor(sweep),
        ),
        run_config=_run_config(sweep, FINISH_EXPERIMENT, folder.experiment, callbacks),
    )


def _run_config(sweep: Sweep, name: str, storage_path: str, callbacks: list):
    return tune.RunConfig(
        name=name,
        storage_path=storage_path,
        failure_config=tune.FailureConfig(max_failures=sweep.search.max_failures),
        callbacks=callbacks,
        verbose=1,
    )
