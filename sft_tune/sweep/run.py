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
from pathlib import Path

from sft_tune.core import data as data_module
from sft_tune.core.files import RawData
from sft_tune.core.prepare import PreparedData, Splits, encoding_key
from sft_tune.errors import InputError, Problem, fail
from sft_tune.sweep.checks import CheckedSweep, check_search
from sft_tune.sweep.cluster import concurrency, start_ray, stop_ray
from sft_tune.sweep.console import ProgressView, sweep_console
from sft_tune.sweep.encodings import SharedData, start_store
from sft_tune.sweep.folder import SweepFolder
from sft_tune.sweep.ranking import contenders
from sft_tune.sweep.records import Status, SweepResult, Trial, collect, search_ended
from sft_tune.sweep.results import summarize
from sft_tune.sweep.searcher import close_orphans, record_finished
from sft_tune.sweep.space import Sweep
from sft_tune.sweep.tunestate import saved_when_changed
from sft_tune.tasks import get_task

log = logging.getLogger(__name__)


def run_search(
    space_path: Path | None = None,
    resume: str | Path | None = None,
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
    before = data_module.TOKENIZATION_PASSES
    encoded = encode_checkpoints(sweep, checked.data)
    data = encoded[0]
    driver_passes = data_module.TOKENIZATION_PASSES - before
    folder.path.mkdir(parents=True, exist_ok=True)
    with sweep_console(folder.file(folder.LOG), verbose) as terminal:
        started = start_ray(sweep, address)
        try:
            # Written once Ray is up, so a failed start leaves no half-made sweep.
            if not checked.resume:
                folder.save_snapshot(sweep)
                folder.sync([folder.SNAPSHOT], strict=True)
            unknown = ", ".join(f"{v:.2%} of the {k} tokens" for k, v in data.coverage.items())
            print(
                f"sweep {sweep.search.name}: {sweep.search.num_trials} trials x "
                f"{_folds_text(sweep.search)} of {sweep.search.metric}; "
                f"folder {folder.location}"
                + (f" (cached in {folder.path})" if folder.remote else "")
                + f" (Ray's output: {folder.file(folder.LOG)})\n"
                f"tokenizer coverage: unknown tokens are {unknown}"
                + _lm_line(data)
                + _encoding_line(sweep, encoded),
                file=terminal,
                flush=True,
            )
            shared = share_encodings(sweep, checked.data, encoded)
            trials = _search(
                sweep,
                folder,
                shared,
                checked.resume,
                use_wandb,
                terminal,
            )
            made = ray.get(shared.store.stats.remote()) if shared.store is not None else None
            encodings = len(encoded) + (len(made["encodings"]) if made else 0)
            passes = driver_passes + (made["tokenization_passes"] if made else 0)
            result = summarize(
                sweep, folder, trials, passes, data.lm_summary("fold"), encodings=encodings
            )
            folder.sync(strict=True)
            return result
        finally:
            try:  # what an interrupted sweep wrote (after a finished one: nothing new)
                folder.sync(strict=True)
            except OSError as err:
                log.warning("could not copy the sweep's files to %s: %s", folder.location, err)
            if started:
                stop_ray()


def encode_checkpoints(sweep: Sweep, raw: RawData) -> list[PreparedData]:
    """Before Ray starts: the base config's data split and encoded, then (over the same splits)
    that of every checkpoint the space searches, so a checkpoint whose tokenizer cannot read the
    data is refused before any trial. LM texts are tokenized only when some trial can run phase
    1. The base config's encoding comes first."""
    from sft_tune.core.model import check_adapter
    from sft_tune.core.prepare import encode_data, prepare_data

    config = sweep.base_config
    task = get_task(config.model.task)
    lm = "two-phase" in sweep.arms()
    search = sweep.search
    try:  # LoRA target modules against the checkpoint's architecture (no weights load)
        for checkpoint in [config, *sweep.checkpoint_configs()]:
            check_adapter(checkpoint.model, task)
    except InputError as err:
        raise InputError(err.problems, title=f"{sweep.source}: invalid adapters") from None
    base = prepare_data(
        config, task, search.folds, search.seed, lm=lm, raw=raw, repeats=search.repeats
    )
    encoded = {base.key: base}
    splits = Splits(base.splits, base.strata, base.groups)
    problems = []
    for other in sweep.checkpoint_configs():
        if encoding_key(other, task) in encoded:
            continue
        try:
            prepared = encode_data(other, task, raw, splits, lm)
        except InputError as err:
            problems += [Problem(f"params.{p.where}", p.value, p.rule, p.fix) for p in err.problems]
            continue
        encoded[prepared.key] = prepared
    if problems:
        raise InputError(
            problems, title=f"{sweep.source}: a searched checkpoint cannot read the data"
        )
    return list(encoded.values())


def share_encodings(sweep: Sweep, raw: RawData, encoded: list[PreparedData]) -> SharedData:
    """The encodings in the object store, and the store that makes the others when the space
    searches a field that changes the encoding."""
    import ray

    refs = {prepared.key: [ray.put(prepared)] for prepared in encoded}
    store = None
    if sweep.reencodes():
        store = start_store(raw, refs[encoded[0].key][0], refs)
    return SharedData(refs, store)


def _search(
    sweep: Sweep,
    folder: SweepFolder,
    data: SharedData,
    restoring: bool,
    use_wandb: bool,
    terminal,
) -> list[Trial]:
    """The search experiment, then the one that finishes the stopped contenders: the trials."""
    from sft_tune.sweep.tracking import WandbTrialCallback
    from sft_tune.sweep.tuner import TrialEvents

    settings = sweep.search
    wandb = WandbTrialCallback(
        settings.wandb_project,
        settings.name,
        folder,
        list(sweep.params),
        settings.cv_folds,
        enabled=use_wandb,
        log_every=sweep.base_config.log_every,
    )
    progress = ProgressView(
        settings.num_trials, settings.cv_folds, settings.metric, terminal, folder.storage_path
    )
    events = TrialEvents(folder, settings.cv_folds)
    callbacks = [
        events,
        wandb,
        progress,
    ]  # the same in both experiments; Tune appends its own to the list it gets, so each gets a copy
    at_once, capped = concurrency(sweep)
    if capped:
        progress.say(capped)
    try:
        with saved_when_changed(not folder.remote):
            trials = _run_tuners(
                sweep, folder, data, restoring, callbacks, events, progress, at_once
            )
    finally:
        wandb.close()
    return trials


def _run_tuners(
    sweep: Sweep,
    folder: SweepFolder,
    data: SharedData,
    restoring: bool,
    callbacks: list,
    events,
    progress: ProgressView,
    at_once: int,
) -> list[Trial]:
    """The search's Tuner, then the one that finishes the stopped contenders."""
    from sft_tune.sweep.tuner import make_finishing_tuner, make_tuner, shared_inputs

    settings = sweep.search
    trials = collect(
        sweep,
        folder,
        make_tuner(
            sweep,
            folder,
            shared_inputs(sweep, folder, data),
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
                f"{t.trial_id} (mean {t.cv_mean:.4f} after {t.folds_done} folds)" for t in chosen
            )
        )
        finish = {t.trial_id: {"params": t.params, "checkpoint": t.checkpoint} for t in chosen}
        events.started = {t.trial_id: t.folds_done for t in chosen}
        tuner = make_finishing_tuner(
            sweep,
            folder,
            shared_inputs(sweep, folder, data, finish),
            list(callbacks),
            list(finish),
            at_once,
        )
        trials = _merge(sweep, folder, trials, collect(sweep, folder, tuner.fit()))
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
        else:  # not finished (its finishing run failed, or the sweep was interrupted): as stopped
            merged.append(
                trial
                if done is None
                else dataclasses.replace(trial, attempts=done.attempts, error=done.error)
            )
    return merged


def _folds_text(search) -> str:
    """`3 folds`, or with repeats `2 x 3 folds` (repeated k-fold)."""
    if search.repeats == 1:
        return f"{search.folds} folds"
    return f"{search.repeats} repeats x {search.folds} folds"


def _lm_line(data) -> str:
    """The sweep header's line on what the LM data leaves out of the unlabelled pool."""
    counts = data.lm_summary("fold")
    if counts is None:
        return ""
    per_fold = "/".join(str(n) for n in counts["dropped_as_copies_of_held_out_texts_per_fold"])
    return (
        f"\nLM data: {counts['unlabelled_texts']} unlabelled texts; left out as copies (compared "
        "case-, width- and space-blind) of test texts: "
        f"{counts['dropped_as_copies_of_test_texts']}, "
        f"of each fold's held-out texts: {per_fold}"
    )


def _encoding_line(sweep: Sweep, encoded: list[PreparedData]) -> str:
    """The sweep header's line on the encodings: those made before the search, and the searched
    fields that make more (once per distinct value, by the sweep's encoding store)."""
    fields = sweep.reencoding_params()
    if not fields:
        return ""
    return (
        f"\nencodings: {len(encoded)} made before the search; the searched {', '.join(fields)} "
        "encode the data again once per distinct value"
    )
