"""The sweep's results: the phase-1 verdict, the stopped trials worth finishing, interrupted
trials."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sft_tune.sweep.ranking import best_trial, choice_text, contenders, phase1_verdict, rank_key
from sft_tune.sweep.records import Status, Trial
from sft_tune.sweep.space import Param, SearchSettings, Sweep


def _sweep(mode="max", steps=None):
    params = {"phase1.steps": Param(type="int", low=0, high=100, step=50)} if steps is None else {}
    return Sweep.model_construct(
        base={"phase1": {"steps": 100 if steps is None else steps}},
        base_config=SimpleNamespace(data=SimpleNamespace(validation_fraction=0.2)),
        params=params,
        search=SearchSettings(mode=mode),
    )


def _trial(trial_id, steps, mean, status="COMPLETE", folds=3, std=0.01, scores=None, seconds=None):
    """A trial record; its fold scores spread ±std around the mean unless given."""
    scores = scores or [mean + std * (j - (folds - 1) / 2) for j in range(folds)]
    return Trial(
        trial_id=trial_id,
        status=Status(status),
        params={"phase1.steps": steps},
        cv_mean=sum(scores) / len(scores) if mean is None else mean,
        cv_std=std,
        fold_scores=scores,
        folds_done=folds,
        checkpoint="ckpt",
        seconds_per_fold=seconds,
    )


def test_sweep_verdict_says_whether_phase1_won_and_by_how_much():
    won = phase1_verdict(
        _sweep(), [_trial("a", 0, 0.60), _trial("b", 50, 0.65), _trial("c", 0, 0.62)]
    )
    assert won["best_uses_phase1"] is True and won["difference"]["mean"] == pytest.approx(0.03)
    assert won["best_plain"]["trial_id"] == "c" and "uses phase 1" in won["statement"]
    assert (
        won["arms"]["plain"]["complete"] == 2 and "plain: 2 sampled, 2 complete" in won["statement"]
    )
    lost = phase1_verdict(_sweep(), [_trial("a", 0, 0.70), _trial("b", 50, 0.65)])
    assert lost["best_uses_phase1"] is False
    assert lost["difference"]["mean"] == pytest.approx(-0.05)
    assert lost["outcome"] == "hurt" and "is a plain fine-tune" in lost["statement"]


@pytest.mark.parametrize(
    "plain, two_phase, outcome, words",
    [
        # +0.05 on every fold, from different fold levels: no spread, above the ROPE
        ([0.60, 0.70, 0.65], [0.65, 0.75, 0.70], "helped", "phase 1 helped: +0.0500"),
        ([0.60, 0.70, 0.65], [0.55, 0.66, 0.59], "hurt", "phase 1 hurt: -0.0500"),
        # within ±0.004 of the plain trial on every fold: the interval lies inside ±0.01
        (
            [0.60, 0.70, 0.65, 0.62, 0.68],
            [0.601, 0.699, 0.651, 0.621, 0.679],
            "no difference",
            "no difference that matters: +0.0002",
        ),
        # the demo's own numbers (issue 33): -0.014, -0.001, +0.017
        ([0.62, 0.58, 0.63], [0.606, 0.579, 0.647], "can't tell", "can't tell yet: the interval"),
    ],
)
def test_the_verdicts_four_outcomes_give_the_interval_never_a_bare_margin(
    plain, two_phase, outcome, words
):
    verdict = phase1_verdict(
        _sweep(),
        [
            _trial("p", 0, None, folds=len(plain), scores=plain),
            _trial("t", 50, None, folds=len(two_phase), scores=two_phase),
        ],
    )
    assert verdict["outcome"] == outcome
    statement = verdict["statement"]
    assert statement.startswith(words), statement
    assert "95% interval on" in statement and "margin" not in statement
    gap = verdict["difference"]
    assert gap["folds"] == len(plain) and gap["low"] <= gap["mean"] <= gap["high"]
    if outcome == "can't tell":
        assert "search.repeats" in statement or "would not decide" in statement


def test_select_simplest_picks_the_cheaper_of_two_equivalent_trials():
    # The plain trial is 0.002 behind the two-phase one on every fold: inside the ROPE.
    two_phase = _trial("a", 50, None, scores=[0.702, 0.652, 0.602], seconds=9.0)
    plain = _trial("b", 0, None, scores=[0.70, 0.65, 0.60], seconds=3.0)
    far = _trial("c", 0, None, scores=[0.50, 0.45, 0.40], seconds=1.0)
    sweep = _sweep()
    assert best_trial(sweep, [two_phase, plain, far])["trial_id"] == "a"  # select: best
    choice = best_trial(sweep, [two_phase, plain, far])["choice"]
    assert choice["rule"] == "best" and [c["trial_id"] for c in choice["indistinguishable"]] == [
        "b"
    ]
    assert choice["runner_up"]["trial_id"] == "b"
    sweep.search.select = "simplest"
    best = best_trial(sweep, [two_phase, plain, far])
    assert best["trial_id"] == "b"  # fewer phase-1 steps, within the ROPE of the best
    assert best["choice"]["top"] == "a" and best["choice"]["runner_up"]["trial_id"] == "a"
    assert best["choice"]["cost"] == {"phase1_steps": 0, "seconds_per_fold": 3.0}
    assert "chosen by `select: simplest`" in choice_text(best["choice"], "macro_f1")
    # The far cheaper trial is behind beyond doubt: never chosen.
    verdict = phase1_verdict(sweep, [two_phase, plain, far])
    assert verdict["best_uses_phase1"] is False and verdict["outcome"] == "no difference"


def test_sweep_verdict_states_what_happened_and_never_contradicts_the_space():
    # Both arms in the space, but no plain trial finished: say so, with what happened to it.
    only = phase1_verdict(
        _sweep(), [_trial("b", 50, 0.65), _trial("a", 0, 0.9, status="STOPPED", folds=1)]
    )
    assert only["difference"] is None and "no plain trial finished all folds" in only["statement"]
    assert (
        "plain: 1 sampled, 1 stopped" in only["statement"]
        and "phase1.steps reach 0" not in only["statement"]
    )
    # A space that fixes phase1.steps above 0 has one arm: the statement says the space decides it.
    fixed = phase1_verdict(_sweep(steps=100), [_trial("b", 100, 0.65)])
    assert fixed["difference"] is None and "keeps phase1.steps above 0" in fixed["statement"]


def test_contenders_are_stopped_trials_that_reach_the_best_complete_mean_and_each_arms_best():
    trials = [
        _trial("a", 0, 0.70),  # the best complete trial
        _trial("b", 0, 0.72, status="STOPPED", folds=1),  # could beat it: finished
        _trial("c", 0, 0.70, status="STOPPED", folds=1),  # ties it: finished
        _trial("d", 0, 0.60, status="STOPPED", folds=1),  # cannot: left stopped
        _trial(
            "e", 50, 0.50, status="STOPPED", folds=1
        ),  # the best of an arm with no complete trial
        _trial("f", 50, 0.40, status="STOPPED", folds=2),
    ]
    assert [t.trial_id for t in contenders(_sweep(), trials)] == ["b", "c", "e"]
    # Lower is better with mode min: every stopped trial at or below a's 0.70 is finished.
    assert [t.trial_id for t in contenders(_sweep("min"), trials)] == ["c", "d", "e", "f"]
    # No complete trial at all: the best stopped one, plus the other arm's best.
    assert [t.trial_id for t in contenders(_sweep(), [t for t in trials if t.trial_id != "a"])] == [
        "b",
        "e",
    ]
    # One arm only: no arm rule.
    one_arm = [_trial("a", 100, 0.70), _trial("e", 100, 0.50, status="STOPPED", folds=1)]
    assert contenders(_sweep(steps=100), one_arm) == []


def test_a_trial_cut_short_by_the_driver_is_interrupted_not_stopped_and_nothing_is_finished(
    tmp_path,
):
    """Ctrl-C (or a killed driver) leaves a trial with some folds and no end event: it is
    INTERRUPTED, the search did not end, and no stopped trial is finished before a resume."""
    from types import SimpleNamespace

    from sft_tune.sweep.folder import EventLog, SweepFolder
    from sft_tune.sweep.records import collect, search_ended

    folder = SweepFolder(tmp_path / "sweep")
    folder.path.mkdir()
    EventLog(str(folder.file(folder.EVENTS)), "stopped", enabled=True).write(
        "end", status="STOPPED"
    )

    def result(trial_id, folds, steps):
        metrics = {
            "sweep_trial_id": trial_id,
            "folds_done": folds,
            "cv_mean": 0.5,
            "cv_std": 0.0,
            "fold_scores": "[0.5]",
        }
        return SimpleNamespace(
            metrics=metrics,
            config={"phase1.steps": steps},
            error=None,
            path=str(tmp_path / trial_id),
        )

    sweep = _sweep()
    sweep.search.folds, sweep.search.num_trials = 3, 3
    trials = {
        t.trial_id: t
        for t in collect(
            sweep, folder, [result("done", 3, 0), result("stopped", 1, 50), result("cut", 1, 50)]
        )
    }
    assert (trials["done"].status, trials["stopped"].status, trials["cut"].status) == (
        "COMPLETE",
        "STOPPED",
        "INTERRUPTED",
    )
    assert not search_ended(sweep, list(trials.values()))


@pytest.mark.parametrize("mode", ["max", "min"])
def test_a_nan_cv_mean_never_wins_and_ranks_after_every_finite_trial(mode):
    """`min` over keys holding NaN keeps the first NaN (every comparison with NaN is false)."""
    sweep = _sweep(mode=mode)
    nan = _trial("a", 0, float("nan"))
    trials = [nan, _trial("b", 0, 0.5), _trial("c", 50, 0.6), _trial("d", 0, float("inf"))]
    assert best_trial(sweep, trials)["trial_id"] == ("c" if mode == "max" else "b")
    ranked = sorted(trials, key=lambda t: rank_key(t, mode))
    assert [t.trial_id for t in ranked[2:]] == ["a", "d"]
    # A NaN partial mean does not block the contenders rule either.
    stopped = _trial("e", 50, 0.9 if mode == "max" else 0.1, status="STOPPED", folds=1)
    assert contenders(sweep, [nan, stopped]) == [stopped]


def test_a_diverged_trial_is_never_chosen_nor_finished_and_the_verdict_says_so():
    sweep = _sweep()
    # A NaN loss still gives a finite macro-F1 (a constant prediction): the trial is DIVERGED.
    diverged = _trial("a", 50, 0.95, status="DIVERGED", folds=1)
    plain, stopped = _trial("b", 0, 0.5), _trial("c", 50, 0.55, status="STOPPED", folds=1)
    trials = [diverged, plain, stopped]
    assert best_trial(sweep, trials)["trial_id"] == "b"
    assert contenders(sweep, trials) == [stopped]
    assert sorted(trials, key=lambda t: rank_key(t, "max"))[-1] is diverged
    verdict = phase1_verdict(sweep, trials)
    assert verdict["arms"]["two-phase"]["diverged"] == 1
    assert "1 diverged" in verdict["statement"]


@pytest.mark.parametrize("winner", ["two-phase", "plain"])
def test_the_verdict_and_best_json_follow_one_rule_on_a_tie(winner):
    """Equal CV means: the ranking's tie-break (the lower std) picks the best trial, and the
    verdict says the same, never "did not help" beside a two-phase best.json."""
    sweep = _sweep()
    two_phase = _trial("a", 50, 0.6, std=0.01 if winner == "two-phase" else 0.05)
    plain = _trial("b", 0, 0.6, std=0.05 if winner == "two-phase" else 0.01)
    best = best_trial(sweep, [two_phase, plain])
    verdict = phase1_verdict(sweep, [two_phase, plain])
    assert verdict["difference"]["mean"] == pytest.approx(0)
    assert verdict["best_uses_phase1"] is (best["params"]["phase1.steps"] > 0)
    assert verdict["best_uses_phase1"] is (winner == "two-phase")
    expected = "uses phase 1" if winner == "two-phase" else "is a plain fine-tune"
    assert expected in verdict["statement"]


@pytest.mark.parametrize("mode", ["max", "min"])
def test_the_report_table_orders_trials_by_the_one_ranking_rule(mode):
    from sft_tune.sweep.ranking import table_key

    better, worse = (0.8, 0.6) if mode == "max" else (0.6, 0.8)
    trials = [
        _trial("a-diverged", 0, 0.9, status="DIVERGED", folds=1),
        _trial(
            "b-partial-best", 0, better + 0.1 if mode == "max" else better - 0.1, "STOPPED", folds=1
        ),
        _trial("c-worse", 0, worse),
        _trial("d-failed", 0, None, status="ERROR", folds=0, scores=[0.0]),
        _trial("e-better", 0, better),
        _trial("f-partial-worse", 0, worse, "STOPPED", folds=1),
    ]
    trials[3].cv_mean = None
    ordered = [t.trial_id for t in sorted(trials, key=lambda t: table_key(t, 3, mode))]
    assert ordered[:4] == ["e-better", "c-worse", "b-partial-best", "f-partial-worse"]
    assert set(ordered[4:]) == {"a-diverged", "d-failed"}
