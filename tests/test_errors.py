import pytest

from sft_tune.errors import SHOWN, InputError, Problem, fail, first_problems


def _problems(n):
    return [Problem(f"train.csv row {i}", i, "must be a label", "fix the row") for i in range(n)]


def test_problem_names_where_value_rule_and_fix():
    problem = Problem("phase1.alpha", -2, "must be at least 0", "set it to 0 or more")
    assert str(problem) == "phase1.alpha: got -2; must be at least 0. Fix: set it to 0 or more"
    # The value is shown as Python writes it, so strings are quoted and None is visible.
    assert "got 'abc';" in str(Problem("data.train", "abc", "must exist", "check the path"))
    assert "got null;" in str(Problem("data.train", None, "is required", "set it"))


def test_a_long_value_is_shortened():
    text = str(Problem("data.labels", "x" * 500, "too long", "shorten it"))
    shown = text.split("got ", 1)[1].split("; too long", 1)[0]
    assert len(shown) == 120 and shown.endswith("...") and shown.startswith("'xxx")
    assert text.endswith("; too long. Fix: shorten it")
    exact = "y" * 118  # repr adds two quotes: exactly 120 characters stay whole
    assert f"got {exact!r};" in str(Problem("k", exact, "r", "f"))


def test_input_error_lists_every_problem_under_a_counted_title():
    problems = _problems(3)
    err = InputError(problems, title="train.csv")
    lines = str(err).splitlines()
    assert lines[0] == "train.csv: 3 problems"
    assert lines[1:] == [f"  - {problem}" for problem in problems]
    assert err.render() == str(err) and err.title == "train.csv"
    problems.append(Problem("later", 1, "r", "f"))  # the error keeps its own list
    assert len(err.problems) == 3


def test_one_problem_is_singular_and_the_default_title_says_invalid_input():
    err = InputError(_problems(1))
    assert str(err).splitlines()[0] == "invalid input: 1 problem"
    assert isinstance(err, Exception)


def test_first_problems_caps_the_list_and_says_how_many_in_all():
    err = first_problems(_problems(25), "train.csv: bad rows")
    assert len(err.problems) == SHOWN == 10
    assert [p.where for p in err.problems] == [f"train.csv row {i}" for i in range(10)]
    assert err.title == "train.csv: bad rows (25 in all, the first 10 listed)"
    assert str(err).splitlines()[0] == (
        "train.csv: bad rows (25 in all, the first 10 listed): 10 problems"
    )
    small = first_problems(_problems(3), "t", limit=2)
    assert len(small.problems) == 2 and small.title == "t (3 in all, the first 2 listed)"


def test_first_problems_within_the_limit_lists_all_under_the_plain_title():
    for n in (1, SHOWN):
        err = first_problems(_problems(n), "train.csv: bad rows")
        assert len(err.problems) == n and err.title == "train.csv: bad rows"


def test_fail_builds_an_error_of_one_problem_to_raise():
    err = fail("--batch-size", 0, "must be at least 1", "pass a positive number")
    assert isinstance(err, InputError)
    assert err.problems == [
        Problem("--batch-size", 0, "must be at least 1", "pass a positive number")
    ]
    assert str(err) == (
        "invalid input: 1 problem\n"
        "  - --batch-size: got 0; must be at least 1. Fix: pass a positive number"
    )
    assert fail("k", 1, "r", "f", title="config.yaml").title == "config.yaml"
    with pytest.raises(InputError) as caught:
        raise fail("k", 1, "r", "f")
    assert caught.value.problems[0].where == "k"
