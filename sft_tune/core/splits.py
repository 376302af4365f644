"""Validation splits and cross-validation folds (scikit-learn), stratified and, where examples
come in groups (sentences of one document, questions on one context), group-aware: a group is
never split between training and held-out data.

`split_problems` says whether the split asked for is possible at all, without scikit-learn (which
is imported only to split), so that a command can check it with the rest of its input."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sft_tune.errors import InputError, Problem, fail

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
            "add examples of those classes, drop them from the label set, or ask for a smaller "
            "split",
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


def split_problems(
    strata: Sequence[Any],
    groups: Sequence[Any] | None,
    folds: int,
    fraction: float,
    path: Path | str,
) -> list[Problem]:
    """What makes the split asked for impossible: `folds` >= 2 folds, or (`folds` 1) a validation
    split of `fraction`; none when it can be made."""
    try:
        if folds == 1:
            _check_validation(strata, groups, fraction, path)
        else:
            _check_folds(strata, groups, folds, path)
    except InputError as err:
        return err.problems
    return []


def _check_folds(strata: Sequence[Any], groups: Sequence[Any] | None, k: int, path: Path) -> None:
    if groups is None:
        check_class_counts(strata, k, f"{k}-fold stratified cross-validation", path)
    else:
        check_group_count(groups, k, f"{k}-fold cross-validation", path)


def _check_validation(
    strata: Sequence[Any], groups: Sequence[Any] | None, fraction: float, path: Path
) -> None:
    if fraction == 0:
        return
    if groups is not None:
        check_group_count(groups, _group_folds(fraction), f"a validation split of {fraction}", path)
        return
    check_class_counts(strata, 2, f"a stratified validation split of {fraction}", path)
    classes, size = len(set(strata)), len(strata)
    held = math.ceil(fraction * size)  # what scikit-learn's train_test_split holds out
    if held < classes or size - held < classes:
        raise fail(
            "data.validation_fraction",
            fraction,
            f"the validation split ({held} of {size} examples) and the rest must each hold at "
            f"least one example per class ({classes} classes)",
            "raise data.validation_fraction or add examples"
            if held < classes
            else "lower data.validation_fraction or add examples",
        )


def _group_folds(fraction: float) -> int:
    """The folds whose first is a group-aware validation split of about `fraction`."""
    return max(2, round(1 / fraction))


def make_folds(
    strata: Sequence[Any], groups: Sequence[Any] | None, k: int, seed: int, path: Path
) -> list[Split]:
    """k folds, shuffled with `seed`: stratified by class, or (with groups) group-aware and
    stratified where the groups allow it."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    _check_folds(strata, groups, k, path)
    if groups is None:
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        pieces = splitter.split(strata, strata)
    else:
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        pieces = splitter.split(strata, _dense(strata), _dense(groups))
    return [(sorted(train.tolist()), sorted(held.tolist())) for train, held in pieces]


def split_validation(
    strata: Sequence[Any], groups: Sequence[Any] | None, fraction: float, seed: int, path: Path
) -> Split:
    """(train, validation) indices; all indices to train when fraction is 0."""
    from sklearn.model_selection import train_test_split

    indices = list(range(len(strata)))
    _check_validation(strata, groups, fraction, path)
    if fraction == 0:
        return indices, []
    if groups is not None:
        return make_folds(strata, groups, _group_folds(fraction), seed, path)[0]
    train, held = train_test_split(
        indices, test_size=fraction, stratify=list(strata), random_state=seed
    )
    return sorted(train), sorted(held)


def _dense(values: Sequence[Any]) -> list[int]:
    """Arbitrary hashable keys as small integers (scikit-learn wants sortable labels)."""
    ids: dict[Any, int] = {}
    return [ids.setdefault(value, len(ids)) for value in values]
