"""`sft-tune search`: Ray Tune + Optuna over the two-phase objective, scored by k-fold CV.

Each Tune trial is a function trainable that launches one Ray Train `TorchTrainer` running all
folds (see `cv.worker_loop`); the trainer's `TuneReportCallback` turns each fold's report into one
Tune result, so ASHA can stop a trial between folds. Trials the scheduler stopped are told to
Optuna as PRUNED (Ray's default tells them as COMPLETE with a partial score, which misleads TPE).
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from ray.tune.search.optuna import OptunaSearch

from sft_tune.config import parse_config
from sft_tune.cv import FAULT_FILE_ENV
from sft_tune.errors import fail
from sft_tune.space import Sweep, load_space, make_sampler, to_optuna, with_params

log = logging.getLogger(__name__)

TUNE_METRIC = "cv_mean"  # running mean of the task metric over the folds done so far
SWEEP_FILE = "sweep.json"
EVENTS_FILE = "events.jsonl"
CONTROLLER_FAILURE_LIMIT = 3
TRIAL_CPU = 0.01  # the Tune trial only launches a TorchTrainer (an all-zero bundle is rejected)


@dataclass
class SweepResult:
    """What a finished (or interrupted) sweep produced."""

    sweep_dir: Path
    trials: list[dict[str, Any]]
    best: dict[str, Any] | None
    tokenization_passes: int
    complete: bool
    optuna_states: dict[str, int] = field(default_factory=dict)


def sweep_dir_of(sweep: Sweep) -> Path:
    """The local sweep folder (storage_path/name); URIs are handled by Ray, results still land locally."""
    storage = sweep.search.storage_path
    base = Path(storage) if "://" not in storage else Path("runs/sweeps")
    return (base / sweep.search.name).resolve()


def experiment_path(sweep: Sweep) -> str:
    """Where Ray Tune and Ray Train keep the sweep's results and checkpoints: the local sweep folder,
    or STORAGE_URI/NAME for s3:// and gs:// storage that every node of a cluster reaches."""
    storage = sweep.search.storage_path
    return f"{storage.rstrip('/')}/{sweep.search.name}" if "://" in storage else str(sweep_dir_of(sweep))


class FoldAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that records trials stopped before their last fold as PRUNED."""

    def __init__(self, *args: Any, folds: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._folds = folds

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # finished in the study before the driver went away (a resumed sweep)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if result and trial_id in self._ot_trials and trial_id not in self._completed_trials:
            # The running CV mean after each fold, as Optuna intermediate values (what TPE ranks
            # pruned trials by).
            scores = json.loads(result.get("fold_scores", "[]"))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # steps Tune already reported are ignored by Optuna
                try:
                    for fold in range(1, len(scores) + 1):
                        self._ot_trials[trial_id].report(sum(scores[:fold]) / fold, fold)
                except optuna.exceptions.UpdateFinishedTrialError:
                    pass  # told before the driver went away (a resumed sweep)
        if result and not error and result.get("folds_done", self._folds) < self._folds:
            result = None  # stopped early: told without a value and without error, Optuna records PRUNED
        super().on_trial_complete(trial_id, result, error)


MOVED: dict[str, str] = {}  # sweep folders moved since they started: old path -> where they are now


def moved_path(path: str) -> str:
    """Where a path inside a sweep folder is now, if that folder moved (what Tune pickled holds the old one)."""
    for old, new in MOVED.items():
        if path == old or path.startswith(old + "/"):
            return new + path[len(old):]
    return path


class SweepStorage(optuna.storages.RDBStorage):
    """The sweep's Optuna study database. Tune pickles the searcher with it; unpickled to resume a
    sweep whose folder has moved, it opens the study.db that moved with the folder."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        if state["url"].startswith("sqlite:///"):
            state["url"] = "sqlite:///" + moved_path(state["url"].removeprefix("sqlite:///"))
        super().__setstate__(state)


def make_searcher(sweep: Sweep, storage_url: str) -> FoldAwareOptunaSearch:
    """The Optuna searcher: metric and mode given here too (OptunaSearch ignores TuneConfig's)."""
    return FoldAwareOptunaSearch(
        space=to_optuna(sweep.params),
        metric=TUNE_METRIC,
        mode=sweep.search.mode,
        sampler=make_sampler(sweep),
        study_name=sweep.search.name,
        storage=SweepStorage(storage_url),
        points_to_evaluate=sweep.search.initial_points or None,
        folds=sweep.search.folds,
    )


def run_trial(params: dict[str, Any], shared: dict[str, Any]) -> None:
    """Tune function trainable: one TorchTrainer run holding every fold of this configuration."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from sft_tune.cv import worker_loop

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


def prepare(space_path: Path | None = None, resume: Path | None = None) -> Sweep:
    """Load and check the sweep (a new space file, or the snapshot of a sweep to resume)."""
    if resume is None:
        sweep = load_space(space_path)
        folder = sweep_dir_of(sweep)
        if (folder / SWEEP_FILE).exists():
            raise fail("search.name", sweep.search.name, f"the sweep folder {folder} already holds a sweep", f"resume it with `sft-tune search --resume {folder}`, or pick another search.name")
        return sweep
    if not (Path(resume) / SWEEP_FILE).is_file():
        raise fail("--resume", str(resume), f"must be a sweep folder holding {SWEEP_FILE}", "pass the folder printed by the interrupted `sft-tune search`")
    sweep = rebase(load_sweep(Path(resume)), Path(resume))
    from ray import tune

    if not tune.Tuner.can_restore(experiment_path(sweep)):
        raise fail("--resume", str(resume), "the sweep never got as far as saving Ray Tune state, so there is nothing to resume", f"delete {resume} and start the sweep again with --space")
    return sweep


def rebase(sweep: Sweep, folder: Path) -> Sweep:
    """A local sweep folder moved since it started (another disk, a copied run) resumes where it is now."""
    was, now = sweep_dir_of(sweep), folder.resolve()
    if "://" in sweep.search.storage_path or was == now:
        return sweep
    if now.name != sweep.search.name:
        raise fail("--resume", str(folder), f"a sweep folder must keep its search.name ({sweep.search.name!r}): the Optuna study and Ray Tune state inside are named after it", f"rename the folder back to {now.parent / sweep.search.name}")
    log.info("sweep folder moved from %s; resuming it at %s", was, now)
    MOVED[str(was)] = str(now)
    return sweep.model_copy(update={"search": sweep.search.model_copy(update={"storage_path": str(now.parent)})})


def load_sweep(folder: Path) -> Sweep:
    """The sweep as saved in its folder when it started."""
    from sft_tune.space import Param, SearchSettings

    saved = json.loads((Path(folder) / SWEEP_FILE).read_text())
    return Sweep(
        base=saved["base"],
        base_config=parse_config(saved["base"]),
        params={k: Param.model_validate(v) for k, v in saved["params"].items()},
        search=SearchSettings.model_validate(saved["search"]),
        source=saved["source"],
    )


def run_search(space_path: Path | None = None, resume: Path | None = None, address: str | None = None, use_wandb: bool = True) -> SweepResult:
    """Run (or resume) a sweep; every input is checked before Ray starts."""
    from sft_tune.cv import prepare_sweep_data

    sweep = prepare(space_path, resume)
    folder = sweep_dir_of(sweep)
    data = prepare_sweep_data(sweep.base_config, sweep.search.folds, sweep.search.seed)
    import ray

    started = _start_ray(sweep, address)
    try:
        if resume is None:  # written once Ray is up, so a failed start leaves no half-made sweep
            folder.mkdir(parents=True, exist_ok=True)
            snapshot = {"base": sweep.base, "params": {k: v.model_dump() for k, v in sweep.params.items()}, "search": sweep.search.model_dump(), "source": sweep.source}
            (folder / SWEEP_FILE).write_text(json.dumps(snapshot, indent=2))
        tuner = _tuner(sweep, folder, data, resume is not None, use_wandb, concurrency(sweep, remote=bool(address or os.environ.get("RAY_ADDRESS"))))
        results = tuner.fit()
        return summarize(sweep, folder, results, data.tokenization_passes)
    finally:
        if started:
            ray.shutdown()


def _start_ray(sweep: Sweep, address: str | None) -> bool:
    """Attach to a cluster or start a local Ray; True when this call started it."""
    import ray

    # Read by the Train controllers of a local Ray (they inherit this process's environment).
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "120")
    if ray.is_initialized():
        _check_resources(sweep)
        return False
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address or os.environ["RAY_ADDRESS"])
        _warn_node_local_storage(sweep)
    else:
        # Trials hold a token CPU share (TRIAL_CPU); their Train workers hold the real CPUs. Declare
        # enough logical CPUs for max_concurrent trials, or a worker group waits forever.
        need = sweep.search.max_concurrent * trial_need(sweep)[0]
        logical = max(os.cpu_count() or 1, math.ceil(need))
        ray.init(num_cpus=logical, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=True)
    try:
        _check_resources(sweep)
    except Exception:
        ray.shutdown()
        raise
    return True


def _warn_node_local_storage(sweep: Sweep) -> None:
    """A multi-node sweep needs storage every node reaches; say so when storage_path is a plain path."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1 and "://" not in sweep.search.storage_path:
        log.warning(
            "search.storage_path %s is a local path on a %d-node cluster: unless it is a shared file system "
            "mounted on every node, trials on other nodes cannot write results and checkpoints there. "
            "Use s3://bucket/path, gs://bucket/path or a shared mount.", sweep.search.storage_path, len(nodes))


def trial_need(sweep: Sweep) -> tuple[float, float]:
    """CPUs and GPUs one trial holds: its own token CPU share plus its Train workers."""
    res = sweep.search.resources
    return res.workers * res.cpus_per_worker + TRIAL_CPU, res.workers * res.gpus_per_worker


def _check_resources(sweep: Sweep) -> None:
    import ray

    need_cpu, need_gpu = trial_need(sweep)
    have = ray.cluster_resources()
    if need_cpu > have.get("CPU", 0) or need_gpu > have.get("GPU", 0):
        raise fail("search.resources", sweep.search.resources.model_dump(), f"one trial needs {need_cpu} CPU and {need_gpu} GPU, the cluster has {have.get('CPU', 0)} CPU and {have.get('GPU', 0)} GPU", "lower workers / cpus_per_worker / gpus_per_worker or add nodes")


def concurrency(sweep: Sweep, remote: bool) -> int:
    """Trials to run at once: search.max_concurrent, capped on a fixed-size Ray to the trials whose
    Train workers fit. A trial reserves only TRIAL_CPU for itself, so Tune would start more trials
    than there are CPUs/GPUs for their workers; those wait, time out and error. A remote cluster may
    autoscale: there it is only a warning."""
    import ray

    need_cpu, need_gpu = trial_need(sweep)
    have = ray.cluster_resources()
    fits = math.floor(have.get("CPU", 0) / need_cpu)
    if need_gpu:
        fits = min(fits, math.floor(have.get("GPU", 0) / need_gpu))
    wanted = sweep.search.max_concurrent
    if wanted <= max(fits, 1):
        return wanted
    message = f"search.max_concurrent {wanted}: the cluster ({have.get('CPU', 0):g} CPU, {have.get('GPU', 0):g} GPU) holds the workers of {max(fits, 1)} trial(s) at once"
    if remote:
        log.warning("%s; the others wait for the autoscaler to add nodes (and fail after RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S if none come)", message)
        return wanted
    log.warning("%s; running %d at a time", message, max(fits, 1))
    return max(fits, 1)


def _tuner(sweep: Sweep, folder: Path, data, restoring: bool, use_wandb: bool, max_concurrent: int | None = None):
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule
    from ray.tune.search import ConcurrencyLimiter

    settings = sweep.search
    shared = {
        "base": sweep.base,
        "resources": settings.resources.model_dump(),
        "metric": settings.metric,
        "data_ref": [ray.put(data)],
        "train_storage": f"{experiment_path(sweep)}/train",
        "event_log": str(folder / EVENTS_FILE),
        "fault_file": os.environ.get(FAULT_FILE_ENV),
    }
    trainable = tune.with_resources(tune.with_parameters(run_trial, shared=shared), {"cpu": TRIAL_CPU})
    from sft_tune.tracking import WandbTrialCallback

    if restoring:
        return tune.Tuner.restore(experiment_path(sweep), trainable=trainable, resume_unfinished=True, resume_errored=True)
    schedulers = {
        # max_t one past the last fold: a trial that reaches its last fold ends by itself (a clean
        # Train teardown) instead of being stopped by the scheduler at the same moment.
        "asha": lambda: ASHAScheduler(time_attr="training_iteration", max_t=settings.folds + 1, grace_period=1, reduction_factor=2),
        "median": lambda: MedianStoppingRule(time_attr="training_iteration", grace_period=1, min_samples_required=2),
        "none": FIFOScheduler,
    }
    search = make_searcher(sweep, settings.optuna_storage or f"sqlite:///{folder / 'study.db'}")
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=TUNE_METRIC,
            mode=settings.mode,
            search_alg=ConcurrencyLimiter(search, max_concurrent=max_concurrent or settings.max_concurrent),
            scheduler=schedulers[settings.scheduler](),
            num_samples=settings.num_trials,
        ),
        run_config=tune.RunConfig(
            name=folder.name,
            storage_path=experiment_path(sweep).rsplit("/", 1)[0],
            failure_config=tune.FailureConfig(max_failures=settings.max_failures),
            callbacks=[WandbTrialCallback(settings.wandb_project, settings.name, folder, list(sweep.params), settings.folds, enabled=use_wandb)],
            verbose=1,
        ),
    )


def summarize(sweep: Sweep, folder: Path, results, tokenization_passes: int) -> SweepResult:
    """Trial table, best configuration and sweep summary, written to the sweep folder."""
    folds = sweep.search.folds
    trials = []
    from sft_tune.cv import read_events

    events = read_events(folder / EVENTS_FILE)
    for result in results:
        metrics = result.metrics or {}
        done = int(metrics.get("folds_done", 0))
        status = "ERROR" if result.error else ("COMPLETE" if done == folds else ("STOPPED" if done else "NOT RUN"))
        params = {k: v for k, v in (result.config or {}).items() if k in sweep.params}
        trials.append({
            "trial_id": (trial_id := metrics.get("trial_id") or _trial_id_from_path(result.path)),
            "status": status,
            "attempts": sum(e["event"] == "start" and e["trial_id"] == trial_id for e in events),
            "folds_done": done,
            "cv_mean": metrics.get("cv_mean"),
            "cv_std": metrics.get("cv_std"),
            "fold_scores": json.loads(metrics.get("fold_scores", "[]")),
            "error": str(result.error).splitlines()[0] if result.error else None,
            "worker_tokenization_passes": metrics.get("worker_tokenization_passes", 0),
            **{f"param:{k}": v for k, v in params.items()},
        })
    trials.sort(key=lambda t: t["trial_id"])
    best = best_trial(sweep, trials)
    states = _optuna_states(sweep, folder)
    passes = tokenization_passes + sum(t["worker_tokenization_passes"] for t in trials)
    complete = sum(t["status"] in ("COMPLETE", "STOPPED", "ERROR") for t in trials) >= sweep.search.num_trials
    _write_outputs(sweep, folder, trials, best, passes, complete, states)
    return SweepResult(folder, trials, best, passes, complete, states)


def _trial_id_from_path(path: str) -> str:
    """Tune names trial folders `<trainable>_<trial id>_<n>_...`; the trainable here is run_trial."""
    return Path(path).name.removeprefix("run_trial_").split("_")[0]


def best_trial(sweep: Sweep, trials: list[dict]) -> dict[str, Any] | None:
    """Best finished trial by CV mean; ties go to the lower standard deviation, then the earlier trial."""
    finished = [t for t in trials if t["status"] == "COMPLETE"]
    if not finished:
        return None
    sign = -1 if sweep.search.mode == "max" else 1
    top = min(finished, key=lambda t: (sign * t["cv_mean"], t["cv_std"], t["trial_id"]))
    params = {k.removeprefix("param:"): v for k, v in top.items() if k.startswith("param:")}
    return {**{k: top[k] for k in ("trial_id", "cv_mean", "cv_std", "fold_scores")}, "metric": sweep.search.metric, "params": params, "config": with_params(sweep.base, params)}


def phase1_verdict(sweep: Sweep, trials: list[dict]) -> dict[str, Any]:
    """Did the best configuration use phase 1, and by how much did it beat the best plain
    fine-tune (phase1.steps = 0) of the same sweep? Both judged by CV mean on COMPLETE trials."""
    finished = [t for t in trials if t["status"] == "COMPLETE"]
    sign = 1 if sweep.search.mode == "max" else -1

    def steps(trial: dict) -> int:
        params = {k.removeprefix("param:"): v for k, v in trial.items() if k.startswith("param:")}
        return int(with_params(sweep.base, params).get("phase1", {}).get("steps", 200))

    def top(group: list[dict]) -> dict | None:
        return max(group, key=lambda t: (sign * t["cv_mean"], -t["cv_std"])) if group else None

    two_phase, plain = top([t for t in finished if steps(t) > 0]), top([t for t in finished if steps(t) == 0])
    metric = sweep.search.metric
    verdict: dict[str, Any] = {
        "best_two_phase": two_phase and {"trial_id": two_phase["trial_id"], "cv_mean": two_phase["cv_mean"]},
        "best_plain": plain and {"trial_id": plain["trial_id"], "cv_mean": plain["cv_mean"]},
        "best_uses_phase1": None,
        "margin": None,
    }
    if two_phase and plain:
        margin = sign * (two_phase["cv_mean"] - plain["cv_mean"])
        uses = margin > 0
        verdict.update(best_uses_phase1=uses, margin=margin)
        if uses:
            verdict["statement"] = f"the best configuration uses phase 1: CV {metric} {two_phase['cv_mean']:.4f} vs {plain['cv_mean']:.4f} for the best plain fine-tune (phase1.steps 0), a margin of {margin:+.4f}"
        else:
            verdict["statement"] = f"phase 1 did not help on this data: the best plain fine-tune (phase1.steps 0) scored CV {metric} {plain['cv_mean']:.4f}, the best two-phase configuration {two_phase['cv_mean']:.4f} ({margin:+.4f})"
    elif two_phase or plain:
        kind = "two-phase" if two_phase else "plain (phase1.steps 0)"
        other = "a plain fine-tune (phase1.steps 0)" if two_phase else "a configuration with phase 1"
        verdict["best_uses_phase1"] = bool(two_phase)
        verdict["statement"] = f"only {kind} configurations finished, so this sweep cannot say whether phase 1 helps; let phase1.steps reach 0 and above so that {other} is tried too"
    else:
        verdict["statement"] = "no trial finished all folds"
    return verdict


def _optuna_states(sweep: Sweep, folder: Path) -> dict[str, int]:
    url = sweep.search.optuna_storage or f"sqlite:///{folder / 'study.db'}"
    try:
        study = optuna.load_study(study_name=sweep.search.name, storage=url)
    except KeyError:
        return {}
    states: dict[str, int] = {}
    for trial in study.trials:
        states[trial.state.name] = states.get(trial.state.name, 0) + 1
    return states


def _write_outputs(sweep: Sweep, folder: Path, trials, best, passes: int, complete: bool, states) -> None:
    import csv

    columns = ["trial_id", "status", "attempts", "folds_done", "cv_mean", "cv_std", "fold_scores", "error"] + sorted({k for t in trials for k in t if k.startswith("param:")})
    with open(folder / "trials.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({**t, "fold_scores": json.dumps(t["fold_scores"])} for t in trials)
    (folder / "trials.json").write_text(json.dumps(trials, indent=2))
    if best is not None:
        (folder / "best.json").write_text(json.dumps({k: v for k, v in best.items() if k != "config"}, indent=2))
        (folder / "best_config.yaml").write_text(yaml.safe_dump(best["config"], sort_keys=False))
    summary = {"sweep_dir": str(folder), "complete": complete, "trials": len(trials), "tokenization_passes": passes, "optuna_states": states, "statuses": {s: sum(t["status"] == s for t in trials) for s in ("COMPLETE", "STOPPED", "ERROR", "NOT RUN")}, "best": {k: v for k, v in (best or {}).items() if k != "config"} or None, "phase1": phase1_verdict(sweep, trials)}
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))


def format_table(result: SweepResult) -> str:
    """The trial table for the terminal."""
    params = sorted({k for t in result.trials for k in t if k.startswith("param:")})
    header = ["trial", *[p.removeprefix("param:") for p in params], "cv mean ± std", "folds", "status"]
    rows = []
    for t in result.trials:
        score = f"{t['cv_mean']:.4f} ± {t['cv_std']:.4f}" if t["cv_mean"] is not None else "-"
        rows.append([t["trial_id"], *[_short(t.get(p)) for p in params], score, str(t["folds_done"]), t["status"]])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in [header, *rows]]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
