"""The racing scheduler: its rules on fold results (unit), and on a real local Ray it stops a
clearly worse trial after its first fold, never the incumbent, and Optuna records it PRUNED."""

import json

import optuna
import pytest
from conftest import write_space
from ray.tune.schedulers import TrialScheduler

from sft_tune.sweep.folder import read_events
from sft_tune.sweep.racing import RacingScheduler
from sft_tune.sweep.strategy import complete_fold_scores

STOP, GO = TrialScheduler.STOP, TrialScheduler.CONTINUE


class _Trial:
    def __init__(self, trial_id):
        self.trial_id = trial_id


def _result(scores, trial_id=None):
    return {
        "fold_scores": json.dumps(scores),
        "folds_done": len(scores),
        "sweep_trial_id": trial_id,
    }


def _race(rules=("paired", "forgiving"), folds=5, mode="max", known=None):
    return RacingScheduler(folds, mode, rope=0.01, ratio=1 / 4, rules=rules, known=known)


def test_nothing_is_stopped_before_there_is_an_incumbent_nor_at_its_last_fold():
    race = _race()
    assert race.on_trial_result(None, _Trial("a"), _result([0.1])) == GO  # no incumbent yet
    for n in range(1, 6):
        assert race.on_trial_result(None, _Trial("b"), _result([0.8] * n)) == GO
    assert race.incumbent() == ("b", [0.8] * 5)
    # far behind, but this is its last fold: it ends by itself, complete
    assert race.on_trial_result(None, _Trial("c"), _result([0.1] * 5)) == GO


def test_the_forgiving_rule_stops_after_one_fold_below_the_incumbents_worst_fold():
    race = _race(rules=("forgiving",), known={"inc": [0.70, 0.80, 0.75, 0.72, 0.78]})
    assert race.on_trial_result(None, _Trial("x"), _result([0.71])) == GO  # above 0.70
    assert race.on_trial_result(None, _Trial("y"), _result([0.69])) == STOP
    assert "worst fold 0.7000" in race.stopped["y"]
    lower = _race(rules=("forgiving",), mode="min", known={"inc": [1.0, 1.2, 1.1, 1.05, 1.15]})
    assert lower.on_trial_result(None, _Trial("z"), _result([1.3])) == STOP  # loss above 1.2


def test_the_paired_rule_needs_two_folds_and_a_gap_beyond_doubt():
    race = _race(rules=("paired",), known={"inc": [0.70, 0.80, 0.75, 0.72, 0.78]})
    assert race.on_trial_result(None, _Trial("x"), _result([0.50])) == GO  # one fold: no spread
    # 0.2 behind on both folds: zero spread, interval [0.2, 0.2] above 0
    assert race.on_trial_result(None, _Trial("x"), _result([0.50, 0.60])) == STOP
    assert "behind the incumbent inc by +0.2000" in race.stopped["x"]
    # behind on average but not beyond doubt: -0.05 then +0.04
    assert race.on_trial_result(None, _Trial("w"), _result([0.65, 0.84])) == GO


def test_the_cannot_win_rule_stops_a_trial_that_can_at_best_tie_within_the_rope():
    incumbent = [0.70, 0.80, 0.75, 0.72, 0.78]
    race = _race(rules=("cannot_win",), known={"inc": incumbent})
    assert race.on_trial_result(None, _Trial("t"), _result([0.70])) == GO  # one fold: no spread
    # the same scores on two folds: never ahead by more than the ROPE (0.01)
    assert race.on_trial_result(None, _Trial("t"), _result([0.70, 0.80])) == STOP
    assert "P(beats the incumbent inc by more than the ROPE 0.01) = 0.00" in race.stopped["t"]
    # ahead on both folds: it may well win
    assert race.on_trial_result(None, _Trial("u"), _result([0.75, 0.84])) == GO
    # behind on one fold, ahead on the other: the posterior leaves it a chance
    assert race.on_trial_result(None, _Trial("v"), _result([0.60, 0.90])) == GO
    # the paired rule alone does not stop a tie: the interval [0, 0] is not above 0
    assert (
        _race(rules=("paired",), known={"inc": incumbent}).on_trial_result(
            None, _Trial("t"), _result([0.70, 0.80])
        )
        == GO
    )


def test_the_intensify_rule_stops_a_trial_behind_by_more_than_the_rope_on_two_shared_folds():
    incumbent = [0.70, 0.80, 0.75, 0.72, 0.78]
    race = _race(rules=("intensify",), known={"inc": incumbent})
    assert race.on_trial_result(None, _Trial("t"), _result([0.50])) == GO  # one fold never decides
    # 0.015 behind on the two folds both ran, with a spread no test would call beyond doubt
    assert race.on_trial_result(None, _Trial("t"), _result([0.655, 0.815])) == STOP
    assert "by +0.0150 on the 2 folds both ran, more than the ROPE 0.01" in race.stopped["t"]
    # 0.005 behind: inside the ROPE, it goes on
    assert race.on_trial_result(None, _Trial("u"), _result([0.69, 0.80])) == GO
    lower = _race(rules=("intensify",), mode="min", known={"inc": [1.0, 1.2, 1.1, 1.05, 1.15]})
    assert lower.on_trial_result(None, _Trial("z"), _result([1.02, 1.22])) == STOP  # loss higher
    assert lower.on_trial_result(None, _Trial("y"), _result([0.98, 1.18])) == GO


def test_the_incumbent_is_never_stopped_and_a_better_trial_takes_its_place():
    race = _race(known={"inc": [0.60, 0.62, 0.61, 0.60, 0.62]})
    for n in range(1, 5):
        assert race.on_trial_result(None, _Trial("inc"), _result([0.1] * n, "inc")) == GO
    for n in range(1, 6):
        assert race.on_trial_result(None, _Trial("new"), _result([0.9] * n, "new")) == GO
    assert race.incumbent()[0] == "new"


def test_a_resumed_sweeps_incumbent_comes_from_its_events():
    events = [
        {"event": "fold", "trial_id": "a", "fold": f, "score": s}
        for f, s in ((1, 0.7), (2, 0.8), (3, 0.75))
    ] + [{"event": "fold", "trial_id": "b", "fold": 1, "score": 0.2}]
    assert complete_fold_scores(events, 3) == {"a": [0.7, 0.8, 0.75]}


@pytest.mark.ray
def test_racing_stops_a_clearly_worse_trial_on_a_real_ray(
    ray_session, tmp_path, tiny_bert, toy_files
):
    from sft_tune.sweep.run import run_search

    # (good scores 1.0 on every fold of the toy data; bad predicts one class: 0.33)
    good = {"phase2.learning_rate": 5e-3, "phase1.steps": 0, "phase2.epochs": 3}
    bad = {**good, "phase2.learning_rate": 1e-3, "phase2.epochs": 1}
    space = write_space(
        tmp_path,
        tiny_bert,
        toy_files,
        "racing",
        num_trials=2,
        folds=3,
        scheduler="racing",
        initial_points=[good, bad],
    )
    result = run_search(space)
    first, second = sorted(result.trials, key=lambda t: t.params["phase2.learning_rate"])[::-1]
    assert first.status == "COMPLETE" and first.folds_done == 3  # the incumbent ran every fold
    assert second.status == "STOPPED" and second.folds_done == 1  # stopped after its first fold
    assert not second.finished_after_stop  # its partial mean cannot win
    assert result.optuna_states == {"COMPLETE": 1, "PRUNED": 1}
    study = optuna.load_study(
        study_name="racing", storage=f"sqlite:///{result.sweep_dir / 'study.db'}"
    )
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "PRUNED"]
    events = read_events(result.sweep_dir / "events.jsonl")
    folds = [e["fold"] for e in events if e["event"] == "fold" and e["trial_id"] == second.trial_id]
    assert folds == [1]
