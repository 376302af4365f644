"""The fold loop: k-fold cross-validation of one configuration, as the loop of a Ray Train worker.

The driver reads and tokenizes the data once (`prepare_sweep_data`) and shares it through the Ray
object store. Each worker runs all folds of its trial inside one TorchTrainer run: for each fold,
both phases train on the other folds plus the unlabelled pool (never the held-out fold's texts),
then the held-out fold is scored and the running mean is reported, so a scheduler can stop weak
trials after the first folds. A checkpoint after each fold lets a restored trial resume at the
next fold.
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sft_tune import data as data_module
from sft_tune.config import RunConfig
from sft_tune.data import SequenceView, TokenArray, text_hashes, tokenize
from sft_tune.model import load_model, load_tokenizer
from sft_tune.run import read_data
from sft_tune.splits import make_folds, split_validation
from sft_tune.sweep.folder import FOLDS_FILE, HISTORY_FILE, EventLog
from sft_tune.tasks import get_task
from sft_tune.train import FitData, Runtime, evaluate, fit, lm_selection, seed_everything, uses_bf16

# Testing hook, read on the driver: when set to a path that does not exist yet, the first fold of
# the next trial to start creates the file and raises, so that tests can check retries.
FAULT_FILE_ENV = "SFT_TUNE_FAULT_FILE"


@dataclass
class SweepData:
    """Tokenized data shared by every trial, fold and worker of a sweep.

    Token ids are `TokenArray`s (flat numpy) and texts are kept only as 64-bit hashes, so a worker's
    `ray.get` maps the object-store copy instead of rebuilding it in its heap: N concurrent trials
    share one copy of the unlabelled pool.
    """

    labelled: Any  # the task's encoded labelled set (all training examples)
    labelled_hashes: np.ndarray  # per labelled example: hash of its text (what LM data must not hold)
    labelled_lm: TokenArray  # the labelled texts tokenized for the LM loss
    unlabelled: TokenArray
    unlabelled_hashes: np.ndarray
    label_names: list[str]
    folds: list[tuple[list[int], list[int]]]  # (train indices, held-out indices) per fold
    tokenization_passes: int
    strata: list[Any] | None = None  # per labelled example, for inner validation splits
    groups: list[Any] | None = None

    def fold_lm_ids(self, fold: int, include_labelled: bool, also_held: Sequence[int] = ()) -> SequenceView:
        """The LM data of one fold: unlabelled texts plus (optionally) its training texts, never a
        text of its held-out part (nor of `also_held`), also not as a copy in the unlabelled pool.
        The rule is `train.lm_selection`; no token is copied."""
        train, held = self.folds[fold]
        excluded = set(also_held)
        keep, chosen = lm_selection(self.unlabelled_hashes, self.labelled_hashes, [i for i in train if i not in excluded], list(held) + list(also_held), include_labelled)
        return SequenceView([(self.unlabelled, keep), (self.labelled_lm, np.asarray(chosen, dtype=np.int64))])

    def fold_split(self, fold: int, fraction: float, seed: int, path: Path) -> tuple[list[int], list[int]]:
        """The fold's training part split again into (train, inner validation) example indices,
        for early stopping that never looks at the held-out fold."""
        train, _ = self.folds[fold]
        strata = [self.strata[i] for i in train]
        groups = [self.groups[i] for i in train] if self.groups is not None else None
        inner_train, inner_val = split_validation(strata, groups, fraction, seed, path)
        return [train[i] for i in inner_train], [train[i] for i in inner_val]


def prepare_sweep_data(config: RunConfig, folds: int, seed: int) -> SweepData:
    """Read, check and tokenize the labelled training file and unlabelled pool, once per sweep."""
    task = get_task(config.model.task)
    raw = read_data(config, task)
    strata, groups = task.strata(raw.train), task.groups(raw.train)
    fold_indices = make_folds(strata, groups, folds, seed, config.data.train)
    before = data_module.TOKENIZATION_PASSES
    tokenizer = load_tokenizer(config.model, task)
    labelled = task.encode(raw.train, tokenizer, raw.label_names, config.data)
    unlabelled_ids = tokenize(raw.unlabelled, tokenizer, config.data.max_length, config.data.cache_dir).input_ids if raw.unlabelled else []
    texts = task.texts(raw.train)
    labelled_lm_ids = tokenize(texts, tokenizer, config.data.max_length, config.data.cache_dir).input_ids
    return SweepData(
        labelled, text_hashes(texts), TokenArray.from_lists(labelled_lm_ids),
        TokenArray.from_lists(unlabelled_ids), text_hashes(raw.unlabelled),
        raw.label_names, fold_indices, data_module.TOKENIZATION_PASSES - before, strata, groups,
    )


def cross_validate(config: RunConfig, data: SweepData, metric: str, rt: Runtime, start: int = 0, scores: list[float] | None = None, after_fold=None, fault_file: str | None = None) -> list[float]:
    """Train and score each fold from `start`; `after_fold(fold, scores, summary, history)` after each."""
    task = get_task(config.model.task)
    scores = list(scores or [])
    tokenizer = load_tokenizer(config.model, task)
    seed_everything(config.seed)
    model = load_model(config.model, task, data.label_names, tokenizer).to(rt.device)
    initial = copy.deepcopy(model.state_dict())
    wrapped = rt.wrap(model)
    for fold in range(start, len(data.folds)):
        _maybe_inject_fault(fault_file)
        seed_everything(config.seed + fold)
        model.load_state_dict(initial)
        train, held = data.folds[fold]
        if config.phase2.early_stopping_patience > 0:
            train, inner = data.fold_split(fold, config.data.validation_fraction, config.seed + fold, config.data.train)
            fold_data = FitData(data.labelled.subset(train), data.fold_lm_ids(fold, config.data.labelled_text_for_lm, inner), data.labelled.subset(inner))
        else:
            fold_data = FitData(data.labelled.subset(train), data.fold_lm_ids(fold, config.data.labelled_text_for_lm))
        result = fit(wrapped, task, fold_data, config, tokenizer, rt, metric)
        metrics = evaluate(wrapped, task, data.labelled.subset(held), tokenizer, rt)
        scores.append(metrics[metric])
        if after_fold is not None:
            after_fold(fold, scores, {"fold_metrics": metrics, **_loss_summary(result.history)}, result.history)
    return scores


def fold_summary(scores: list[float]) -> dict[str, Any]:
    """Running CV statistics after some folds."""
    return {
        "folds_done": len(scores),
        "cv_mean": statistics.fmean(scores),
        "cv_std": statistics.pstdev(scores) if len(scores) > 1 else 0.0,
        "fold_scores": json.dumps(scores),
    }


def _loss_summary(history: list[dict]) -> dict[str, float]:
    """Last phase-1 and phase-2 losses of a fold, for the trial's results."""
    summary = {}
    for phase in (1, 2):
        last = [h for h in history if h["phase"] == phase][-1:]
        for key in ("lm_loss", "task_loss", "loss"):
            if last and last[0][key] == last[0][key]:  # skip NaN (not computed)
                summary[f"phase{phase}_{key}"] = last[0][key]
    return summary


def _maybe_inject_fault(path: str | None) -> None:
    if path and not os.path.exists(path):
        Path(path).write_text("injected fault\n")
        raise RuntimeError(f"injected fault ({FAULT_FILE_ENV}={path})")


def worker_loop(loop_config: dict[str, Any]) -> None:
    """Ray Train worker: all folds of one trial, one report (and checkpoint) per fold."""
    import ray
    import ray.train
    import ray.train.torch

    config = RunConfig.model_validate(loop_config["run_config"])
    data: SweepData = ray.get(loop_config["data_ref"][0])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    rt = Runtime(device=device, bf16=uses_bf16(config, device), rank=rank, world_size=world, progress=False)
    rt.wrap = lambda model: ray.train.torch.prepare_model(model, move_to_device=False, parallel_strategy_kwargs={"find_unused_parameters": True})

    start, scores, last = 0, [], None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            saved = json.loads((Path(folder) / FOLDS_FILE).read_text())
            scores, last = saved["scores"], saved["metrics"]
            start = len(scores)
    if start >= len(data.folds):
        # Every fold finished before the driver went away: hand Tune the final result again.
        ray.train.report(last)
        return
    events = EventLog(loop_config.get("event_log"), loop_config.get("trial_id"), enabled=rank == 0)
    events.write("start", fold=start + 1)

    def after_fold(fold: int, scores: list[float], summary: dict[str, Any], history: list[dict]) -> None:
        metrics = {"fold": fold + 1, "fold_score": scores[-1], **fold_summary(scores), **_flat(summary), "worker_tokenization_passes": data_module.TOKENIZATION_PASSES}
        with tempfile.TemporaryDirectory() as folder:
            ckpt = None
            if rank == 0:
                (Path(folder) / FOLDS_FILE).write_text(json.dumps({"scores": scores, "metrics": metrics}))
                (Path(folder) / HISTORY_FILE).write_text("".join(json.dumps(h) + "\n" for h in history))
                ckpt = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(metrics, checkpoint=ckpt)
        events.write("fold", fold=fold + 1, score=scores[-1])  # after the checkpoint is persisted

    cross_validate(config, data, loop_config["metric"], rt, start, scores, after_fold, loop_config.get("fault_file"))


def _flat(summary: dict[str, Any]) -> dict[str, Any]:
    flat = {}
    for key, value in summary.items():
        if isinstance(value, dict):
            flat.update({f"{key}/{k}": v for k, v in value.items() if isinstance(v, (int, float))})
        else:
            flat[key] = value
    return flat
