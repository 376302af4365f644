"""Validation splits and cross-validation folds (scikit-learn), stratified and, where examples
come in groups (sentences of one document, questions on one context), group-aware: a group is
never split between training and held-out data."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

from sft_tune.errors import fail

Split = tuple[list[int], list[int]]


def check_class_counts(strata: Sequence[Any], needed: int, what: str, path: Path) -> None:
    """Every class must have `needed` examples for the split asked for."""
    counts = Counter(strata)
    short = {label: n for label, n in sorted(counts.items()) if n < needed}
    if short:
        raise fail(
            f"{path} labels",
            short,
            f"every class needs at least {needed} examples for {what}",
            "add examples of those classes, drop them from the label set, or ask for a smaller split",
        )


def check_group_count(groups: Sequence[Any], needed: int, what: str, path: Path) -> None:
    """Group-aware splits need at least `needed` distinct groups."""
    count = len(set(groups))
    if count < needed:
        raise fail(
            f"{path}",
            f"{count} groups (documents or contexts)",
            f"{what} needs at least {needed} groups, since a group is never split",
            "add data, or ask for fewer folds / a smaller split",
        )


def make_folds(
    strata: Sequence[Any], groups: Sequence[Any] | None, k: int, seed: int, path: Path
) -> list[Split]:
    """k folds, shuffled with `seed`: stratified by class, or (with groups) group-aware and
    stratified where the groups allow it."""
    what = f"{k}-fold cross-validation"
    if groups is None:
        check_class_counts(strata, k, f"{k}-fold stratified cross-validation", path)
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        pieces = splitter.split(strata, strata)
    else:
        check_group_count(groups, k, what, path)
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        pieces = splitter.split(strata, _dense(strata), _dense(groups))
    return [(sorted(train.tolist()), sorted(held.tolist())) for train, held in pieces]


def split_validation(
    strata: Sequence[Any], groups: Sequence[Any] | None, fraction: float, seed: int, path: Path
) -> Split:
    """(train, validation) indices; all indices to train when fraction is 0."""
    indices = list(range(len(strata)))
    if fraction == 0:
        return indices, []
    if groups is not None:
        k = max(2, round(1 / fraction))
        check_group_count(groups, k, f"a validation split of {fraction}", path)
        return make_folds(strata, groups, k, seed, path)[0]
    check_class_counts(strata, 2, f"a stratified validation split of {fraction}", path)
    classes = len(set(strata))
    if round(fraction * len(strata)) < classes:
        raise fail(
            "data.validation_fraction",
            fraction,
            f"the validation split must hold at least one example per class ({classes} classes, {len(strata)} examples)",
            "raise data.validation_fraction or add examples",
        )
    train, held = train_test_split(
        indices, test_size=fraction, stratify=list(strata), random_state=seed
    )
    return sorted(train), sorted(held)


def _dense(values: Sequence[Any]) -> list[int]:
    """Arbitrary hashable keys as small integers (scikit-learn wants sortable labels)."""
    ids: dict[Any, int] = {}
    return [ids.setdefault(value, len(ids)) for value in values]
