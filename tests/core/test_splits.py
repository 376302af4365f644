from collections import Counter
from pathlib import Path

import pytest

from sft_tune.core.splits import make_folds, split_validation
from sft_tune.errors import InputError

PATH = Path("data/train.csv")


def _strata(**counts):
    return [label for label, n in counts.items() for _ in range(n)]


def _grouped(groups=40, size=4):
    """`groups` documents of `size` examples each; a document's examples share one class."""
    strata = [("a" if g % 4 else "b") for g in range(groups) for _ in range(size)]
    doc_ids = [f"doc-{g}" for g in range(groups) for _ in range(size)]
    return strata, doc_ids


def _check_partition(split, n):
    train, held = split
    assert train == sorted(train) and held == sorted(held)
    assert not set(train) & set(held)
    assert sorted(train + held) == list(range(n))


def _check_groups_whole(split, groups):
    train, held = split
    assert not {groups[i] for i in train} & {groups[i] for i in held}


def test_validation_split_keeps_the_class_shares():
    strata = _strata(a=60, b=20)
    split = split_validation(strata, None, 0.25, seed=0, path=PATH)
    _check_partition(split, len(strata))
    assert Counter(strata[i] for i in split[1]) == {"a": 15, "b": 5}


def test_validation_fraction_zero_trains_on_everything():
    strata = _strata(a=5, b=1)  # no class-count rule applies without a split
    assert split_validation(strata, None, 0.0, seed=0, path=PATH) == (list(range(6)), [])


def test_validation_split_never_splits_a_group():
    strata, groups = _grouped()
    split = split_validation(strata, groups, 0.2, seed=0, path=PATH)
    _check_partition(split, len(strata))
    _check_groups_whole(split, groups)
    assert 0 < len(split[1]) < len(strata) / 2


def test_k_folds_hold_out_every_example_once_and_keep_the_class_shares():
    strata = _strata(a=30, b=15, c=45)
    folds = make_folds(strata, None, 3, seed=0, path=PATH)
    assert len(folds) == 3
    for split in folds:
        _check_partition(split, len(strata))
        assert Counter(strata[i] for i in split[1]) == {"a": 10, "b": 5, "c": 15}
    held = [i for _, fold_held in folds for i in fold_held]
    assert sorted(held) == list(range(len(strata)))


def test_group_folds_hold_out_every_example_once_and_never_split_a_group():
    strata, groups = _grouped(groups=30, size=3)
    folds = make_folds(strata, groups, 3, seed=0, path=PATH)
    assert len(folds) == 3
    for split in folds:
        _check_partition(split, len(strata))
        _check_groups_whole(split, groups)
        assert {strata[i] for i in split[1]} == {"a", "b"}  # both classes in every fold
    held = [i for _, fold_held in folds for i in fold_held]
    assert sorted(held) == list(range(len(strata)))


def test_group_keys_may_be_any_hashable_values():
    strata = _strata(a=12, b=12)
    groups = [(i % 6, "doc") if i % 2 else i % 6 for i in range(24)]  # ints and tuples mixed
    folds = make_folds(strata, groups, 3, seed=0, path=PATH)
    for split in folds:
        _check_partition(split, 24)
        _check_groups_whole(split, groups)


def test_the_same_seed_gives_the_same_split():
    strata = _strata(a=30, b=30)
    _, groups = _grouped(groups=15, size=4)
    for groups_or_none in (None, groups):
        assert make_folds(strata, groups_or_none, 3, 5, PATH) == make_folds(
            strata, groups_or_none, 3, 5, PATH
        )
        assert split_validation(strata, groups_or_none, 0.2, 5, PATH) == split_validation(
            strata, groups_or_none, 0.2, 5, PATH
        )
    assert make_folds(strata, None, 3, 5, PATH) != make_folds(strata, None, 3, 6, PATH)
    assert split_validation(strata, None, 0.2, 5, PATH) != split_validation(
        strata, None, 0.2, 6, PATH
    )


def test_more_folds_than_a_class_has_examples_names_the_file_and_the_short_classes():
    strata = _strata(a=10, b=2, c=1)
    with pytest.raises(InputError) as caught:
        make_folds(strata, None, 3, seed=0, path=PATH)
    [problem] = caught.value.problems
    assert problem.where == f"{PATH} labels"
    assert problem.value == {"b": 2, "c": 1}
    assert "at least 3 examples" in problem.rule and "3-fold" in problem.rule


def test_fewer_groups_than_folds_names_the_file():
    strata = _strata(a=4, b=4)
    groups = ["d1"] * 4 + ["d2"] * 4
    with pytest.raises(InputError) as caught:
        make_folds(strata, groups, 3, seed=0, path=PATH)
    [problem] = caught.value.problems
    assert problem.where == str(PATH)
    assert problem.value.startswith("2 groups") and "at least 3 groups" in problem.rule


def test_a_grouped_validation_split_needs_one_over_the_fraction_groups():
    strata = _strata(a=8, b=8)
    groups = [f"d{i // 4}" for i in range(16)]  # 4 groups; a 0.2 split uses 5 folds
    with pytest.raises(InputError) as caught:
        split_validation(strata, groups, 0.2, seed=0, path=PATH)
    assert caught.value.problems[0].where == str(PATH)
    assert "at least 5 groups" in caught.value.problems[0].rule
    _check_partition(split_validation(strata, groups, 0.25, seed=0, path=PATH), 16)


def test_a_validation_split_too_small_for_one_example_per_class():
    strata = _strata(a=2, b=2, c=2)
    with pytest.raises(InputError) as caught:
        split_validation(strata, None, 0.1, seed=0, path=PATH)  # 0.6 examples for 3 classes
    [problem] = caught.value.problems
    assert problem.where == "data.validation_fraction" and problem.value == 0.1
    assert "3 classes" in problem.rule and "1 of 6 examples" in problem.rule


def test_a_validation_split_holds_what_scikit_learn_holds_out():
    # 20% of 6 is 1.2 examples: train_test_split holds out ceil(1.2) = 2, one per class.
    train, held = split_validation(_strata(a=3, b=3), None, 0.2, seed=0, path=PATH)
    assert len(held) == 2 and sorted(_strata(a=3, b=3)[i] for i in held) == ["a", "b"]


def test_a_stratified_validation_split_needs_two_examples_of_each_class():
    with pytest.raises(InputError) as caught:
        split_validation(_strata(a=10, b=1), None, 0.5, seed=0, path=PATH)
    [problem] = caught.value.problems
    assert problem.where == f"{PATH} labels" and problem.value == {"b": 1}
