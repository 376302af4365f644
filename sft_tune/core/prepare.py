"""Prepared data: a config's files read and checked, split, and tokenized once; and the rule for
which texts feed a split's LM loss (never a held-out or test text, also not as a copy in the pool,
written another way)."""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sft_tune.config import RunConfig
from sft_tune.core import data as data_module
from sft_tune.core.data import (
    SequenceView,
    TokenArray,
    text_hashes,
    tokenize,
    unknown_tokens,
    unreadable_characters,
)
from sft_tune.core.files import RawData, read_data
from sft_tune.core.model import load_tokenizer
from sft_tune.core.splits import make_folds, split_validation
from sft_tune.errors import InputError, Problem

log = logging.getLogger(__name__)

Split = tuple[list[int], list[int]]  # (train indices, held-out indices) of the labelled set


@dataclass(frozen=True)
class HeldForms:
    """Every text form of each labelled example that LM data must not hold while the example is
    held out (`TaskFiles.held_out_texts`, e.g. a generation prompt alone and with its response),
    as `data.text_hashes` of the normalized form, with the example each belongs to."""

    owner: np.ndarray  # int64: the example of each form
    hashes: np.ndarray  # uint64

    @classmethod
    def of_examples(cls, forms: Sequence[Sequence[str]]) -> HeldForms:
        owner = np.fromiter((i for i, texts in enumerate(forms) for _ in texts), dtype=np.int64)
        return cls(owner, text_hashes([text for texts in forms for text in texts]))

    def of(self, indices: Sequence[int]) -> np.ndarray:
        """The hashes of the forms of these examples."""
        return self.hashes[np.isin(self.owner, np.asarray(list(indices), dtype=np.int64))]


@dataclass
class PreparedData:
    """A config's data read, checked, split and tokenized once: used by a training run (one split:
    train and validation), by every fold of a sweep's trials (k folds, or one holdout) and by
    `select` (a training run). Every split's training data follows one LM-text rule.

    Token ids are `TokenArray`s (flat numpy) and texts are kept only as 64-bit hashes, so a worker's
    `ray.get` maps the object-store copy instead of rebuilding it in its heap: N concurrent trials
    share one copy of the unlabelled pool.
    """

    labelled: Any  # the task's encoded labelled set (all training examples)
    # per labelled example: hash of its text (what LM data must not hold)
    labelled_hashes: np.ndarray
    labelled_lm: TokenArray  # the labelled texts tokenized for the LM loss
    unlabelled: TokenArray
    unlabelled_hashes: np.ndarray
    label_names: list[str]
    splits: list[Split]
    tokenization_passes: int
    strata: list[Any] | None = None  # per labelled example, for inner validation splits
    groups: list[Any] | None = None
    test: Any | None = None  # the task's encoded test set, when asked for
    lm: bool = True  # whether the LM texts were read (False: no split has LM data)
    coverage: dict[str, float] | None = None  # share of unknown tokens: labelled, unlabelled sample
    held_forms: HeldForms | None = None  # None: an example's only form is its LM text
    # unlabelled texts read, those dropped as copies of test texts, and per split those dropped
    # as copies of its held-out texts (None without LM texts)
    lm_counts: dict[str, Any] | None = None
    key: str = ""  # `encoding_key` of the config it was encoded for
    digest: str = ""  # a hash of the encoded labelled set: the same digest, the same encoding

    def lm_ids(
        self, split: int, include_labelled: bool, also_held: Sequence[int] = ()
    ) -> SequenceView:
        """The LM data of one split: unlabelled texts plus (optionally) its training texts, never a
        text of its held-out part (nor of `also_held`), also not as a copy in the unlabelled pool.
        The rule is `lm_selection`; no token is copied. Empty when the LM texts were not read."""
        if not self.lm:
            return SequenceView([])
        train, held = self.splits[split]
        excluded = set(also_held)
        keep, chosen = lm_selection(
            self.unlabelled_hashes,
            self.labelled_hashes,
            [i for i in train if i not in excluded],
            list(held) + list(also_held),
            include_labelled,
            self.held_forms,
        )
        return SequenceView(
            [(self.unlabelled, keep), (self.labelled_lm, np.asarray(chosen, dtype=np.int64))]
        )

    def inner_split(self, split: int, fraction: float, seed: int, path: Path) -> Split:
        """The split's training part split again into (train, inner validation) example indices,
        for early stopping that never looks at the held-out part."""
        train, _ = self.splits[split]
        strata = [self.strata[i] for i in train]
        groups = [self.groups[i] for i in train] if self.groups is not None else None
        inner_train, inner_val = split_validation(strata, groups, fraction, seed, path)
        return [train[i] for i in inner_train], [train[i] for i in inner_val]

    def fit_data(self, split: int, config: RunConfig, evaluate_held_out: bool = False):
        """What `loop.fit` trains on for one split. A training run evaluates each epoch on the
        held-out part (`evaluate_held_out`: its validation split); a CV fold keeps its held-out
        part for the fold's score, and evaluates (for early stopping) on an inner split."""
        from sft_tune.core.loop import FitData

        train, held = self.splits[split]
        include = config.data.labelled_text_for_lm
        if evaluate_held_out:
            return FitData(
                self.labelled.subset(train),
                self.lm_ids(split, include),
                self.labelled.subset(held) if held else None,
            )
        if config.phase2.early_stopping_patience > 0:
            train, inner = self.inner_split(
                split, config.data.validation_fraction, config.seed + split, config.data.train
            )
            return FitData(
                self.labelled.subset(train),
                self.lm_ids(split, include, inner),
                self.labelled.subset(inner),
            )
        return FitData(self.labelled.subset(train), self.lm_ids(split, include))

    def held_out(self, split: int) -> Any:
        return self.labelled.subset(self.splits[split][1])

    def lm_summary(self, held_out: str) -> dict[str, Any] | None:
        """What the LM data left out of the unlabelled pool, for run.json and a sweep's summary:
        the texts that copy a test text (left out of every split), and per split those that copy
        one of its held-out texts (`held_out`: "validation" for a training run's one split, else
        "fold"); None without LM data."""
        if self.lm_counts is None:
            return None
        per_split = self.lm_counts["dropped_per_split"]
        kind = (
            {"dropped_as_copies_of_validation_texts": per_split[0]}
            if held_out == "validation"
            else {"dropped_as_copies_of_held_out_texts_per_fold": per_split}
        )
        return {
            "unlabelled_texts": self.lm_counts["unlabelled_texts"],
            "dropped_as_copies_of_test_texts": self.lm_counts["dropped_as_copies_of_test_texts"],
            **kind,
        }


def prepare_data(
    config: RunConfig,
    task,
    folds: int = 1,
    seed: int | None = None,
    with_test: bool = False,
    lm: bool | None = None,
    raw: RawData | None = None,
    repeats: int = 1,
) -> PreparedData:
    """Read, check, split and tokenize a config's data once. `folds` 1 is one split of
    data.validation_fraction (a training run's validation split, or a sweep's holdout), k >= 2
    is k-fold CV (`repeats` times, see `split_data`); `seed` (default the config's) shuffles the
    split; `with_test` also encodes the
    test file; `lm` (default: the config runs phase 1) reads and tokenizes the LM texts, else
    no split has LM data. `task` is the config's task (`tasks.get_task(config.model.task)`);
    `raw` is the files already read by `files.read_data` with the same `lm`, else they are read."""
    lm = config.phase1.steps > 0 if lm is None else lm
    raw = read_data(config, task, lm) if raw is None else raw
    seed = config.seed if seed is None else seed
    splits = split_data(config, task, raw, folds, seed, repeats)
    return encode_data(config, task, raw, splits, lm, with_test)


def encoding_key(config: RunConfig, task) -> str:
    """Everything besides the files that `encode_data` reads of a config: the checkpoint (its
    tokenizer), the lengths and the task's encoding options. Configs with one key share one
    encoding (a sweep encodes each distinct key once)."""
    options = task.options
    return json.dumps(
        {
            "model": [config.model.name_or_path, config.model.gguf_file],
            "task": task.name,
            "max_length": config.data.max_length,
            "stride": config.data.stride,
            "options": config.data.task_sections.get(options.section)
            if options is not None
            else None,
        },
        sort_keys=True,
    )


@dataclass(frozen=True)
class Splits:
    """The labelled set's splits (k folds, or one holdout) and what inner splits need: one
    stratum (and group) per example. They depend on the files alone, never on the encoding."""

    splits: list[Split]
    strata: list[Any]
    groups: list[Any] | None


def split_data(
    config: RunConfig, task, raw: RawData, folds: int, seed: int, repeats: int = 1
) -> Splits:
    """`folds` 1 is one split of data.validation_fraction, k >= 2 is k-fold CV, shuffled by
    `seed`; stratified, and group-aware where the task has groups. `repeats` R > 1 is repeated
    k-fold: R x k splits, repeat r shuffled by `seed + r` (so repeat 0 is the unrepeated split)."""
    strata, groups = task.strata(raw.train), task.groups(raw.train)
    splits = []
    for repeat in range(repeats):
        if folds == 1:
            fraction = config.data.validation_fraction
            splits.append(
                split_validation(strata, groups, fraction, seed + repeat, config.data.train)
            )
        else:
            splits += make_folds(strata, groups, folds, seed + repeat, config.data.train)
    return Splits(splits, strata, groups)


def encode_data(
    config: RunConfig, task, raw: RawData, splits: Splits, lm: bool, with_test: bool = False
) -> PreparedData:
    """The files' data tokenized and encoded as `config` says (its model's tokenizer, its
    data.max_length, ...), over the given splits; see `prepare_data`."""
    before = data_module.TOKENIZATION_PASSES
    tokenizer = load_tokenizer(config.model, task)
    texts = task.texts(raw.train)
    labelled_hashes = text_hashes(texts)
    forms = HeldForms.of_examples(task.held_out_texts(raw.train))
    test_forms = task.held_out_texts(raw.test) if raw.test is not None else []
    unlabelled, unlabelled_hashes = without_copies(raw.unlabelled, test_forms)
    labelled_text_ids = tokenize(
        texts, tokenizer, config.data.max_length, config.data.cache_dir
    ).input_ids
    coverage = check_coverage(config, tokenizer, texts, labelled_text_ids, raw.unlabelled)
    labelled = task.encode(raw.train, tokenizer, raw.label_names, config.data)
    unlabelled_ids = (
        tokenize(unlabelled, tokenizer, config.data.max_length, config.data.cache_dir).input_ids
        if unlabelled
        else []
    )
    labelled_lm_ids = labelled_text_ids if lm else []
    test = (
        task.encode(raw.test, tokenizer, raw.label_names, config.data)
        if with_test and raw.test is not None
        else None
    )
    counts = None
    if lm:
        counts = {
            "unlabelled_texts": len(raw.unlabelled),
            "dropped_as_copies_of_test_texts": len(raw.unlabelled) - len(unlabelled),
            "dropped_per_split": [
                int(np.isin(unlabelled_hashes, held_hashes(labelled_hashes, forms, held)).sum())
                for _, held in splits.splits
            ],
        }
    return PreparedData(
        labelled,
        labelled_hashes,
        TokenArray.from_lists(labelled_lm_ids),
        TokenArray.from_lists(unlabelled_ids),
        unlabelled_hashes,
        raw.label_names,
        splits.splits,
        data_module.TOKENIZATION_PASSES - before,
        splits.strata,
        splits.groups,
        test,
        lm,
        coverage,
        forms,
        counts,
        encoding_key(config, task),
        hashlib.blake2b(pickle.dumps(labelled), digest_size=8).hexdigest(),
    )


def without_copies(
    pool: Sequence[str], forms: Sequence[Sequence[str]]
) -> tuple[list[str], np.ndarray]:
    """The pool's texts that are no copy (in `data.normalized` form) of any of `forms` (the test
    file's texts: no split's LM data may hold them), and their hashes."""
    hashes = text_hashes(pool)
    if not forms:
        return list(pool), hashes
    keep = ~np.isin(hashes, text_hashes([text for texts in forms for text in texts]))
    return [text for text, kept in zip(pool, keep) if kept], hashes[keep]


def held_hashes(
    labelled_hashes: np.ndarray, forms: HeldForms | None, indices: Sequence[int]
) -> np.ndarray:
    """The hashes LM data must not hold while these examples are held out: their LM texts and
    every other form of them."""
    own = labelled_hashes[list(indices)]
    return own if forms is None else np.concatenate([own, forms.of(indices)])


COVERAGE_SAMPLE = 2000  # unlabelled texts whose tokens are checked (the pool can be large)


def check_coverage(
    config: RunConfig,
    tokenizer,
    texts: Sequence[str],
    text_ids: Sequence[Sequence[int]],
    unlabelled: Sequence[str],
) -> dict[str, float]:
    """The share of unknown tokens the tokenizer makes of the labelled texts and of a sample of
    the unlabelled ones, logged for every run; above `data.max_unknown_fraction` the model
    cannot read the data's language and the run stops (`InputError`, before any model loads)."""
    sample = random.Random(0).sample(list(unlabelled), min(len(unlabelled), COVERAGE_SAMPLE))
    parts = {"labelled": (texts, text_ids)}
    if sample:
        parts["unlabelled"] = (
            sample,
            tokenizer(sample, truncation=True, max_length=config.data.max_length)["input_ids"],
        )
    shares, problems = {}, []
    limit = config.data.max_unknown_fraction
    for part, (part_texts, ids) in parts.items():
        unknown, total = unknown_tokens(ids, tokenizer)
        shares[part] = unknown / total if total else 0.0
        log.info(
            "tokenizer coverage: %.2f%% of the tokens of the %s texts%s are unknown (%d of %d)",
            100 * shares[part],
            part,
            f" (a sample of {len(part_texts)})" if part == "unlabelled" else "",
            unknown,
            total,
        )
        if shares[part] > limit:
            unread = unreadable_characters(part_texts, tokenizer)
            shown = ", ".join(f"{char!r} ({count}x)" for char, count in unread)
            problems.append(
                Problem(
                    "model.name_or_path",
                    config.model.name_or_path,
                    f"its tokenizer must read the data: {shares[part]:.1%} of the tokens of the "
                    f"{part} texts are unknown ({unknown} of {total}), above "
                    f"data.max_unknown_fraction {limit:g}; characters it cannot read: "
                    f"{shown or 'none alone (unknown only in context)'}",
                    "use a model whose vocabulary covers the language of the data, or raise "
                    "data.max_unknown_fraction to train anyway",
                )
            )
    if problems:
        raise InputError(problems, title="the model cannot read the data")
    return shares


def lm_selection(
    unlabelled_hashes: np.ndarray,
    labelled_hashes: np.ndarray,
    train_indices: Sequence[int],
    heldout_indices: Sequence[int],
    include_labelled: bool,
    forms: HeldForms | None = None,
) -> tuple[np.ndarray, list[int]]:
    """Which texts feed the LM loss of one split, by the hash of the normalized text
    (`data.text_hashes`): the unlabelled texts that are not a held-out text nor another form of
    one (`forms`; the pool may hold copies of labelled texts, written another way), and, when
    `include_labelled`, one copy of each training text that is not held out (several examples
    may share a text: QA questions on one context). Returns (unlabelled indices, labelled
    indices)."""
    held = held_hashes(labelled_hashes, forms, heldout_indices)
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
