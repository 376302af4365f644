"""Prepared data: a config's files read and checked, split, and tokenized once; and the rule for
which texts feed a split's LM loss (never a held-out text, also not as a copy in the pool)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sft_tune.config import RunConfig
from sft_tune.core import data as data_module
from sft_tune.core.data import SequenceView, TokenArray, read_unlabelled, text_hashes, tokenize
from sft_tune.core.model import load_tokenizer
from sft_tune.core.splits import make_folds, split_validation
from sft_tune.errors import fail
from sft_tune.tasks import get_task


@dataclass
class RawData:
    """Everything read from the data files and checked, before any tokenizer or model loads."""

    train: Any
    test: Any | None
    unlabelled: list[str]
    label_names: list[str]


def read_data(config: RunConfig, task) -> RawData:
    """Read and check every data file of the config (bad files raise `InputError`)."""
    data = config.data
    train = task.read(data.train, data, "labelled training file")
    names = task.label_names(train, data)
    task.check_labels(train, names, data.train)
    test = None
    if data.test is not None:
        test = task.read(data.test, data, "labelled test file")
        task.check_labels(test, names, data.test)
    unlabelled = read_unlabelled(data.unlabelled, data.unlabelled_text_column)
    if config.phase1.steps > 0 and not unlabelled and not data.labelled_text_for_lm:
        raise fail("phase1.steps", config.phase1.steps, "phase 1 needs LM text: `data.unlabelled` files or `data.labelled_text_for_lm: true`", "add unlabelled files, enable labelled_text_for_lm, or set phase1.steps to 0")
    return RawData(train, test, unlabelled, names)


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
    if folds == 1:  # a holdout: one split of data.validation_fraction
        fold_indices = [split_validation(strata, groups, config.data.validation_fraction, seed, config.data.train)]
    else:
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


def lm_selection(
    unlabelled_hashes: np.ndarray,
    labelled_hashes: np.ndarray,
    train_indices: Sequence[int],
    heldout_indices: Sequence[int],
    include_labelled: bool,
) -> tuple[np.ndarray, list[int]]:
    """Which texts feed the LM loss of one split, by text hash (`data.text_hashes`): the unlabelled
    texts that are not a held-out text (the pool may hold copies of labelled texts), and, when
    `include_labelled`, one copy of each training text that is not held out (several examples
    may share a text: QA questions on one context). Returns (unlabelled indices, labelled indices)."""
    held = labelled_hashes[list(heldout_indices)]
    keep = np.flatnonzero(~np.isin(unlabelled_hashes, held))
    chosen: list[int] = []
    if include_labelled:
        seen = set(held.tolist())
        for i in train_indices:
            key = int(labelled_hashes[i])
            if key not in seen:
                seen.add(key)
                chosen.append(i)
    return keep, chosen


def lm_sequences(
    unlabelled_ids: Sequence[list[int]],
    unlabelled_texts: Sequence[str],
    labelled_ids: Sequence[list[int]],
    labelled_texts: Sequence[str],
    train_indices: Sequence[int],
    heldout_indices: Sequence[int],
    include_labelled: bool,
) -> list[list[int]]:
    """The LM token ids of one split (the rule of `lm_selection`), for a single run's lists."""
    keep, chosen = lm_selection(text_hashes(unlabelled_texts), text_hashes(labelled_texts), train_indices, heldout_indices, include_labelled)
    return [unlabelled_ids[i] for i in keep] + [labelled_ids[i] for i in chosen]
