"""`sft-tune search`: check everything, prepare the data once, search, finish the stopped trials
that could still be the best, and write the results.

The search runs as one Tune experiment (the sweep folder). Early stopping must not hide the best
configuration, nor leave an arm without a complete trial: when the search ends, the stopped
trials worth finishing (`results.contenders`) run their remaining folds from their last fold
checkpoint in a second experiment inside the folder (`finish/`), and their results replace the
partial ones before the best configuration is chosen.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from sft_tune.errors import fail
from sft_tune.space import Sweep
from sft_tune.sweep.checks import CheckedSweep, check_search
from sft_tune.sweep.cluster import concurrency, start_ray
from sft_tune.sweep.console import LOG_FILE, ProgressView, sweep_console
from sft_tune.sweep.folder import SweepFolder
from sft_tune.sweep.results import (
    Status,
    SweepResult,
    Trial,
    collect,
    contenders,
    search_ended,
    summarize,
)
from sft_tune.sweep.searcher import close_orphans, record_finished

log = logging.getLogger(__name__)


def run_search(
    space_path: Path | None = None,
    resume: Path | None = None,
    address: str | None = None,
    use_wandb: bool = True,
    verbose: bool = False,
    checked: CheckedSweep | None = None,
) -> SweepResult:
    """Run (or resume) a sweep; every input is checked before Ray starts (`checks.check_search`,
    or `checked`, its result). While it runs, the terminal shows the progress view and Ray's
    output goes to SWEEP_DIR/sweep.log (also to the terminal with `verbose`)."""
    import ray
    from ray import tune

    from sft_tune.core.prepare import prepare_data
    from sft_tune.tasks import get_task

    checked = checked or check_search(space_path, resume, address)
    sweep, folder, address = checked.sweep, checked.folder, checked.address
    if checked.resume and not tune.Tuner.can_restore(folder.experiment):
        raise fail(
            "--resume",
            str(folder.path),
            "the sweep never got as far as saving Ray Tune state, so there is nothing to resume",
            f"delete {folder.path} and start the sweep again with --space",
        )
    if checked.resume and (was := folder.moved_from()) is not None:
        log.info("sweep folder moved from %s; resuming it at %s", was, folder.path)
    # LM texts are read (by the checks) and tokenized only when some trial can run phase 1.
    lm = "two-phase" in sweep.arms()
    data = prepare_data(
        sweep.base_config,
        get_task(sweep.base_config.model.task),
        sweep.search.folds,
        sweep.search.seed,
        lm=lm,
        raw=checked.data,
    )
    folder.path.mkdir(parents=True, exist_ok=True)
    with sweep_console(folder.file(LOG_FILE), verbose) as terminal:
        started = start_ray(sweep, address)
        try:
            # Written once Ray is up, so a failed start leaves no half-made sweep.
            if not checked.resume:
                folder.save_snapshot(sweep)
            unknown = ", ".join(f"{v:.2%} of the {k} tokens" for k, v in data.coverage.items())
            print(
                f"sweep {sweep.search.name}: {sweep.search.num_trials} trials x {sweep.search.folds} folds of {sweep.search.metric}; "
                f"folder {folder.path} (Ray's output: {folder.file(LOG_FILE)})\n"
                f"tokenizer coverage: unknown tokens are {unknown}" + _lm_line(data),
                file=terminal,
                flush=True,
            )
            trials = _search(
                sweep,
                folder,
                ray.put(data),
                checked.resume,
                use_wandb,
                terminal,
                remote=bool(address or os.environ.get("RAY_ADDRESS")),
            )
            return summarize(
                sweep, folder, trials, data.tokenization_passes, data.lm_summary("fold")
            )
        finally:
            if started:
                ray.shutdown()


def _search(
    sweep: Sweep,
    folder: SweepFolder,
    data_ref,
    restoring: bool,
    use_wandb: bool,
    terminal,
    remote: bool,
) -> list[Trial]:
    """The search experiment, then the one that finishes the stopped contenders: the trials."""
    from sft_tune.sweep.tracking import WandbTrialCallback
    from sft_tune.sweep.tuner import TrialEvents, make_finishing_tuner, make_tuner, shared_inputs

    settings = sweep.search
    if not folder.remote:
        # Tune saves its experiment state at every step (default: at most every 10 s), so that
        # what a killed driver leaves behind is at most one step older than what it did.
        os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    wandb = WandbTrialCallback(
        settings.wandb_project,
        settings.name,
        folder,
        list(sweep.params),
        settings.folds,
        enabled=use_wandb,
        log_every=sweep.base_config.log_every,
    )
    progress = ProgressView(settings.num_trials, settings.folds, settings.metric, terminal)
    callbacks = [
        TrialEvents(folder, settings.folds),
        wandb,
        progress,
    ]  # the same in both experiments; Tune appends its own to the list it gets, so each gets a copy
    at_once = concurrency(sweep, remote)
    try:
        trials = collect(
            sweep,
            folder,
            make_tuner(
                sweep,
                folder,
                shared_inputs(sweep, folder, data_ref),
                list(callbacks),
                restoring,
                at_once,
            ).fit(),
        )
        if restoring:  # trials a killed driver left RUNNING in the study
            close_orphans(settings.name, folder.optuna_url(settings.optuna_storage), trials)
        # Only after a search that ended: an interrupted one is resumed first (--resume).
        chosen = contenders(sweep, trials) if search_ended(sweep, trials) else []
        if chosen:
            progress.finish_total = len(chosen)
            progress.say(
                f"finishing {len(chosen)} stopped trial(s) before choosing the best: "
                + ", ".join(
                    f"{t.trial_id} (mean {t.cv_mean:.4f} after {t.folds_done} folds)"
                    for t in chosen
                )
            )
            finish = {t.trial_id: {"params": t.params, "checkpoint": t.checkpoint} for t in chosen}
            tuner = make_finishing_tuner(
                sweep,
                folder,
                shared_inputs(sweep, folder, data_ref, finish),
                list(callbacks),
                list(finish),
                at_once,
            )
            trials = _merge(sweep, folder, trials, collect(sweep, folder, tuner.fit()))
    finally:
        wandb.close()
    return trials


def _merge(
    sweep: Sweep, folder: SweepFolder, trials: list[Trial], finished: list[Trial]
) -> list[Trial]:
    """The search's trials with the finished ones' results in place of their partial ones."""
    by_id = {t.trial_id: t for t in finished}
    merged = []
    for trial in trials:
        done = by_id.get(trial.trial_id)
        if done is not None and done.status is Status.COMPLETE:
            merged.append(dataclasses.replace(done, params=trial.params, finished_after_stop=True))
            record_finished(
                sweep.search.name,
                folder.optuna_url(sweep.search.optuna_storage),
                trial.trial_id,
                done.fold_scores,
            )
        else:  # not finished (its finishing run failed, or the sweep was interrupted): as it stopped
            merged.append(
                trial
                if done is None
                else dataclasses.replace(trial, attempts=done.attempts, error=done.error)
            )
    return merged


def _lm_line(data) -> str:
    """The sweep header's line on what the LM data leaves out of the unlabelled pool."""
    counts = data.lm_summary("fold")
    if counts is None:
        return ""
    per_fold = "/".join(str(n) for n in counts["dropped_as_copies_of_held_out_texts_per_fold"])
    return (
        f"\nLM data: {counts['unlabelled_texts']} unlabelled texts; left out as copies (compared "
        f"case-, width- and space-blind) of test texts: {counts['dropped_as_copies_of_test_texts']}, "
        f"of each fold's held-out texts: {per_fold}"
    )
