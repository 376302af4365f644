"""W&B records of a sweep: one run per trial, grouped by sweep, plus the best model as an Artifact.

Logging happens on the driver, from the results that rank 0 of each trial reports (Ray Train
passes on rank 0's report), so exactly one writer per trial exists whatever the number of DDP
workers. Per-step losses travel in each fold's checkpoint (`history.jsonl`).

Per-step losses go to W&B every `log_every` steps (and each phase's last step).
W&B is offline unless the user configured it online (`WANDB_MODE`). It never crashes or stalls a
sweep: the first failure is warned about once and W&B is off for the rest of the process.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
from pathlib import Path
from typing import Any

from ray import tune

from sft_tune.sweep.folder import FINISH_KEY, HISTORY_FILE, SweepFolder, fold_checkpoint, new_fold
from sft_tune.sweep.records import Status, all_folds_done, end_status, trial_error_text

log = logging.getLogger(__name__)

INIT_TIMEOUT_S = 60


class Wandb:
    """A guarded handle on the `wandb` module: every call goes through `call`, which turns
    failures into one warning and disables W&B for the rest of the process."""

    def __init__(self, enabled: bool = True) -> None:
        self.module = None
        self.failed = False
        if not enabled:
            return
        try:
            import wandb

            self.module = wandb
        except Exception as err:  # not installed, or broken
            self._warn(err)

    @property
    def active(self) -> bool:
        return self.module is not None and not self.failed

    def call(self, what: str, fn, *args: Any, **kwargs: Any) -> Any:
        if not self.active:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            self._warn(err, what)
            return None

    def init(self, **kwargs: Any):
        mode = os.environ.get("WANDB_MODE", "offline")
        settings = self.call(
            "settings",
            lambda: self.module.Settings(init_timeout=INIT_TIMEOUT_S, silent=True, console="off"),
        )
        return (
            self.call(
                "init",
                self.module.init,
                mode=mode,
                reinit="create_new",
                settings=settings,
                **kwargs,
            )
            if self.active
            else None
        )

    def _warn(self, err: Exception, what: str = "import") -> None:
        if not self.failed:
            log.warning(
                "W&B unavailable (%s failed: %s: %s); the sweep goes on without it",
                what,
                type(err).__name__,
                str(err).splitlines()[0] if str(err) else "",
            )
        self.failed = True


def read_history(checkpoint_path: str | None) -> list[dict[str, Any]]:
    """The per-step records a fold left in its checkpoint (empty when absent)."""
    if not checkpoint_path:
        return []
    try:
        import ray.train

        with ray.train.Checkpoint(checkpoint_path).as_directory() as folder:
            path = Path(folder) / HISTORY_FILE
            return (
                [json.loads(line) for line in path.read_text().splitlines()]
                if path.is_file()
                else []
            )
    except Exception as err:  # a missing checkpoint must not stop the sweep
        log.debug("no fold history at %s: %s", checkpoint_path, err)
        return []


def every_nth_step(records: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The records of every n-th step of each phase, and of each phase's last step: W&B's rows
    cost CPU that a 2-core machine's training shares (history.jsonl keeps every step)."""
    last = {record["phase"]: record["step"] for record in records}
    return [r for r in records if r["step"] % n == 0 or r["step"] == last[r["phase"]]]


def step_metrics(record: dict[str, Any]) -> dict[str, float]:
    """W&B keys of one step record: phase<k>/loss, lm_loss, task_loss, lr (NaN parts left out)."""
    prefix = f"phase{record['phase']}"
    return {
        f"{prefix}/{key}": record[key]
        for key in ("loss", "lm_loss", "task_loss", "lr")
        if key in record and record[key] == record[key]
    }


class WandbTrialCallback(tune.Callback):
    """Tune callback: a W&B run per trial with params, per-step losses, fold metrics, CV and status.

    Every W&B call runs, in order, on the callback's own thread: Tune hands a trial its next step
    only after the callbacks saw its last result, so W&B (thousands of per-step rows per fold)
    must not hold up the driver loop. A trial the scheduler stops keeps its run open until the
    sweep ends (`close`): if the sweep finishes it before selection (a second Tune trial that
    carries its id under FINISH_KEY), the remaining folds go to the same run, so each trial has one
    run however it ran."""

    def __init__(
        self,
        project: str,
        group: str,
        folder: SweepFolder,
        params: list[str],
        folds: int,
        enabled: bool = True,
        log_every: int = 1,
    ) -> None:
        self.enabled = enabled
        self.project, self.group, self.folder, self.params, self.folds, self.log_every = (
            project,
            group,
            folder,
            params,
            folds,
            log_every,
        )
        self.__setstate__(self.__getstate__())

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its callbacks with the sweep's state: the settings, no open run."""
        return {
            k: getattr(self, k)
            for k in ("enabled", "project", "group", "folder", "params", "folds", "log_every")
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.wandb = Wandb(self.enabled)
        # Touched only on the W&B thread:
        self.runs: dict[str, Any] = {}  # sweep trial id -> open run of a running trial
        self.stopped: dict[
            str, Any
        ] = {}  # sweep trial id -> open run of a trial the scheduler stopped
        self.steps: dict[str, int] = {}
        self._jobs: queue.Queue | None = None

    @staticmethod
    def trial_of(trial) -> str:
        """The sweep's id of a Tune trial (a finishing trial carries the stopped one's id)."""
        return trial.config.get(FINISH_KEY) or trial.trial_id

    # -- Tune's hooks: each hands its work to the W&B thread -----------------------------------

    def on_trial_start(self, iteration: int, trials: list, trial, **info: Any) -> None:
        config = {k: v for k, v in trial.config.items() if k in self.params}
        self._submit(self._start, self.trial_of(trial), config, FINISH_KEY in trial.config)

    def on_trial_result(
        self, iteration: int, trials: list, trial, result: dict, **info: Any
    ) -> None:
        if new_fold(result):
            self._submit(
                self._fold,
                self.trial_of(trial),
                fold_checkpoint(trial.path, result, self.folder.storage_path),
                dict(result),
            )

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        status = end_status(trial.last_result, self.folds)
        if status is Status.DIVERGED:
            self._submit(self._finish, self.trial_of(trial), status.value, 1)
            return
        self._submit(
            self._complete, self.trial_of(trial), (trial.last_result or {}).get("folds_done", 0)
        )

    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        if all_folds_done(trial.last_result, self.folds):  # died after its last fold: complete
            self._submit(self._complete, self.trial_of(trial), self.folds)
            return
        error = trial_error_text(trial, self.folder.storage_path)
        self._submit(self._finish, self.trial_of(trial), "FAILED", 1, error)

    def on_trial_recover(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._submit(self._recover, self.trial_of(trial))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._submit(self._interrupt)
        self._drain()

    def close(self) -> None:
        """End the runs of stopped trials that were not finished (the sweep is over)."""
        self._submit(self._close_stopped)
        self._drain()

    # -- the W&B thread ------------------------------------------------------------------------

    def _submit(self, job, *args: Any) -> None:
        if not self.wandb.active:
            return
        if self._jobs is None:
            self._jobs = queue.Queue()
            threading.Thread(
                target=self._work, args=(self._jobs,), name="sft-tune-wandb", daemon=True
            ).start()
        self._jobs.put((job, args))

    def _work(self, jobs: queue.Queue) -> None:
        while True:
            job, args = jobs.get()
            try:
                job(*args)
            except (
                Exception
            ) as err:  # never let W&B stop the sweep (Wandb.call guards W&B's own calls)
                log.warning("W&B record skipped (%s: %s)", type(err).__name__, err)
            finally:
                jobs.task_done()

    def _drain(self) -> None:
        if self._jobs is not None:
            self._jobs.join()

    def _start(self, key: str, config: dict[str, Any], finishing: bool) -> None:
        if key in self.runs or not self.wandb.active:
            return
        if not finishing and key in self._completed():
            return  # its run ended complete under an earlier driver: never a second one
        if key in self.stopped:
            self.runs[key] = run = self.stopped.pop(key)
            self.wandb.call("summary", run.summary.update, {"finished_after_stop": True})
            return
        self.folder.path.mkdir(parents=True, exist_ok=True)
        run_id = f"{self.group}-{key}" + (
            "-finish" if finishing else ""
        )  # a finishing trial whose run an earlier driver closed: a run of its own
        run = self.wandb.init(
            project=self.project,
            group=self.group,
            name=key,
            id=run_id,
            job_type="trial",
            config=config,
            dir=str(self.folder.path),
            resume="allow",
        )
        if run is not None:
            self.runs[key] = run
            # A run resumed under a new driver goes on from the last step it logged.
            self.steps.setdefault(key, self._saved_steps().get(key, 0))

    def _completed(self) -> set[str]:
        return {
            e["trial_id"]
            for e in self.folder.events()
            if e["event"] == "end" and e["status"] == "COMPLETE"
        }

    def _steps_file(self) -> Path:
        return self.folder.path / "wandb" / "steps.json"

    def _saved_steps(self) -> dict[str, int]:
        try:
            return json.loads(self._steps_file().read_text())
        except (OSError, ValueError):
            return {}

    def _save_steps(self) -> None:
        path = self._steps_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({**self._saved_steps(), **self.steps}))
        os.replace(tmp, path)

    def _fold(self, key: str, checkpoint: str | None, result: dict[str, Any]) -> None:
        run = self.runs.get(key)
        if run is None:
            return
        fold = result["fold"]
        for record in every_nth_step(read_history(checkpoint), self.log_every):
            self.steps[key] += 1
            self.wandb.call(
                "log", run.log, {**step_metrics(record), "fold": fold}, step=self.steps[key]
            )
        folds = {
            f"fold/{k.removeprefix('fold_metrics/')}": v
            for k, v in result.items()
            if k.startswith("fold_metrics/")
        }
        summary = {
            "fold": fold,
            "fold/score": result["fold_score"],
            "cv_mean": result["cv_mean"],
            "cv_std": result["cv_std"],
            "folds_done": result["folds_done"],
            **folds,
        }
        self.steps[key] += 1
        self.wandb.call("log", run.log, summary, step=self.steps[key])
        self.wandb.call(
            "summary", run.summary.update, {"fold_scores": json.loads(result["fold_scores"])}
        )
        self._save_steps()

    def _complete(self, key: str, done: int) -> None:
        if done >= self.folds:
            self._finish(key, "COMPLETE", 0)
            return
        run = self.runs.pop(key, None)
        if run is not None:  # stopped early: STOPPED unless the sweep finishes it before the end
            self.wandb.call("summary", run.summary.update, {"status": "STOPPED"})
            self.stopped[key] = run

    def _recover(self, key: str) -> None:
        run = self.runs.get(key)
        if run is not None:
            self.wandb.call(
                "summary", run.summary.update, {"retries": run.summary.get("retries", 0) + 1}
            )

    def _finish(self, key: str, status: str, exit_code: int, error: str | None = None) -> None:
        run = self.runs.pop(key, None)
        if run is None:
            return
        self.wandb.call(
            "summary", run.summary.update, {"status": status, **({"error": error} if error else {})}
        )
        self.wandb.call("finish", run.finish, exit_code=exit_code)

    def _interrupt(self) -> None:
        for key in list(self.runs):  # trials still running (e.g. Ctrl-C)
            self._finish(key, "INTERRUPTED", 1)

    def _close_stopped(self) -> None:
        for key, run in list(self.stopped.items()):
            self.wandb.call("finish", run.finish, exit_code=0)
            del self.stopped[key]


def log_best_model(
    project: str,
    group: str,
    folder: SweepFolder,
    model_dir: Path,
    best: dict[str, Any],
    enabled: bool = True,
) -> bool:
    """Log the exported best model as a W&B Artifact of type `model` with the alias `best`."""
    handle = Wandb(enabled)
    run = handle.init(
        project=project,
        group=group,
        name=f"{group}-best",
        job_type="select",
        config={"params": best.get("params", {})},
        dir=str(folder.path),
    )
    if run is None:
        return False

    def log_artifact() -> None:
        artifact = handle.module.Artifact(
            f"{group}-best-model",
            type="model",
            metadata={k: v for k, v in best.items() if k != "config"},
        )
        artifact.add_dir(str(model_dir))
        run.log_artifact(artifact, aliases=["best"])
        verdict = best.get("phase1") or {}
        run.summary.update(
            {
                "test": best.get("test", {}),
                "cv_mean": best.get("cv_mean"),
                "cv_std": best.get("cv_std"),
                # the phase-1 verdict's numbers and the choice's rule, beside the model
                "phase1": {
                    "outcome": verdict.get("outcome"),
                    "statement": verdict.get("statement"),
                    **{
                        k: v
                        for k, v in (verdict.get("difference") or {}).items()
                        if k != "differences"
                    },
                    "fold_differences": (verdict.get("difference") or {}).get("differences"),
                },
                "choice": best.get("choice"),
            }
        )

    handle.call("artifact", log_artifact)
    handle.call("finish", run.finish)
    return handle.active
