#!/usr/bin/env python
"""Replays the fold scores of finished `none` sweeps under racing rules, without training.

    .venv/bin/python studies/racing_replay.py [--orders N] FOLDER [FOLDER ...]

What it does, how, and where its results go: studies/README.md, section `racing_replay.py`.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from harness import parser  # noqa: E402  (bench/harness.py)

from sft_tune.sweep import racing  # noqa: E402
from sft_tune.sweep.racing import RacingScheduler  # noqa: E402

RULE_SETS = [("paired", "forgiving"), ("forgiving",), ("paired",), ("cannot_win",), ("intensify",)]
RULE_SETS += [("paired", "forgiving", "cannot_win"), racing.DEFAULT_RULES, racing.RULES]
THRESHOLDS = (0.05, 0.10, 0.20)


def trials_of(events_path: Path) -> list[tuple[str, list[float]]]:
    order, scores = [], {}
    for line in events_path.read_text().splitlines():
        event = json.loads(line)
        if event["event"] == "start" and event["trial_id"] not in scores:
            order.append(event["trial_id"])
            scores[event["trial_id"]] = []
        elif event["event"] == "fold":
            scores[event["trial_id"]].append(event["score"])
    return [(t, scores[t]) for t in order if scores[t]]  # not one that ended before a fold


def arms_of(events_path: Path) -> dict[str, bool]:
    """Whether each trial of the sweep beside `events_path` runs phase 1 (its trials.json)."""
    rows = json.loads((events_path.parent / "trials.json").read_text())
    return {row["trial_id"]: row.get("param:phase1.steps", 1) > 0 for row in rows}


def replay(trials, rules, folds: int, rope: float, arms=None) -> tuple[int, str]:
    race = RacingScheduler(folds, "max", rope, 1 / (folds - 1), rules=rules)
    return _run(trials, folds, lambda t, s: bool(race.behind(t, s)), race.complete, arms)


def replay_asha(trials, folds: int, arms=None) -> tuple[int, str]:
    """The same fold scores through the ASHA scheduler a sweep makes (`strategy.SCHEDULERS`),
    fed each trial's running CV mean after each fold, as Tune does."""
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from sft_tune.sweep.strategy import SCHEDULERS

    settings = SimpleNamespace(cv_folds=folds)
    asha = SCHEDULERS["asha"](SimpleNamespace(search=settings), None)
    asha.set_search_properties("cv_mean", "max")

    def stop(trial_id: str, scores: list[float]) -> bool:
        trial = SimpleNamespace(trial_id=trial_id)
        if len(scores) == 1:
            asha.on_trial_add(None, trial)
        result = {"training_iteration": len(scores), "cv_mean": statistics.fmean(scores)}
        return asha.on_trial_result(None, trial, result) == TrialScheduler.STOP

    return _run(trials, folds, stop, None, arms)


def _run(trials, folds: int, stop, complete=None, arms=None) -> tuple[int, str]:
    """Trials one at a time, each stopped after the first fold where `stop(id, scores)` says so;
    then finished before selection, as `ranking.contenders` does: stopped trials whose partial
    mean reaches the best complete one and, with `arms` ({id: runs phase 1}) holding both arms,
    the best stopped trial of an arm with none complete. `complete` (a scheduler's own record of
    the trials that ran every fold) is filled in."""
    complete, stopped, trained = ({} if complete is None else complete), {}, 0
    for trial_id, scores in trials:
        ran = len(scores)
        for j in range(1, len(scores)):
            if stop(trial_id, scores[:j]):
                ran = j
                stopped[trial_id] = scores[:j]
                break
        trained += ran
        if ran == len(scores):
            complete[trial_id] = scores
    best = max(statistics.fmean(s) for s in complete.values())
    finished = [t for t, partial in stopped.items() if statistics.fmean(partial) >= best]
    for arm in (False, True) if arms and len({arms[t] for t, _ in trials}) == 2 else ():
        pool = [t for t in stopped if arms[t] == arm]
        if pool and not any(arms[t] == arm for t in [*complete, *finished]):
            finished.append(max(pool, key=lambda t: statistics.fmean(stopped[t])))
    for trial_id in finished:
        trained += folds - len(stopped[trial_id])
        complete[trial_id] = dict(trials)[trial_id]
    chosen = max(complete, key=lambda t: statistics.fmean(complete[t]))
    return trained, chosen


def orders(runs, count: int, rope: float = 0.01) -> None:
    """The default rules, less one, plus one or with one swapped for another, over `count`
    random trial and fold orders of each sweep (seed 0 for each, so a sweep's figures do not depend
    on the other folders given): the share of none's folds trained, and how far the choice is
    behind none's."""
    racing.CANNOT_WIN = 0.10  # the rule's own level (the table above may have left another)
    default = racing.DEFAULT_RULES
    variants = [
        default,
        *(tuple(r for r in default if r != left_out) for left_out in default),
        *((*default, added) for added in racing.RULES if added not in default),
        *(
            tuple(other if r == swapped else r for r in default)
            for swapped in default
            for other in racing.RULES
            if other not in default
        ),
    ]
    for name, trials, arms in runs:
        folds = max(len(s) for _, s in trials)
        means = {t: statistics.fmean(s) for t, s in trials}
        rng, draws = random.Random(0), []
        for _ in range(count):
            fold_order = rng.sample(range(folds), folds)
            draws.append(
                rng.sample([(t, [s[i] for i in fold_order]) for t, s in trials], len(trials))
            )
        print(f"{name}, {count} random trial and fold orders:")
        for rules in variants:
            shares, behind = [], []
            for shuffled in draws:
                trained, chosen = replay(shuffled, rules, folds, rope, arms)
                shares.append(trained / sum(len(s) for _, s in trials))
                behind.append(max(means.values()) - means[chosen])
            print(
                f"  {'+'.join(rules):42s} share mean {statistics.fmean(shares):6.1%}, "
                f"max {max(shares):6.1%}, > 50% in {sum(x > 0.5 for x in shares)}/{count}; "
                f"choice > ROPE behind in {sum(b > rope for b in behind)}/{count} "
                f"(at most {max(behind) * 100:.2f} points)"
            )


def main() -> int:
    folders = ("folders", Path, "the bench's kept folders", {"nargs": "+"})
    args = parser(__doc__, [folders, ("--orders", 0, "random orders per sweep")]).parse_args()
    paths = sorted(
        p for folder in args.folders for p in folder.glob("sweeps/sched-none-*/events.jsonl")
    )
    if not paths:
        sys.exit("no sweeps/sched-none-*/events.jsonl under the folders given")
    runs = [(p.parent.name, trials_of(p), arms_of(p)) for p in paths]
    print("sweeps:", ", ".join(f"{name} ({len(t)} trials)" for name, t, _ in runs))
    levels = {True: THRESHOLDS, False: (None,)}  # cannot_win at each level
    variants = [(rules, t) for rules in RULE_SETS for t in levels["cannot_win" in rules]]
    for rules, threshold in [*variants, (("asha",), None)]:
        if threshold is not None:
            racing.CANNOT_WIN = threshold
        cells = []
        for _, trials, arms in runs:
            folds = max(len(s) for _, s in trials)
            total = sum(len(s) for _, s in trials)
            means = {t: statistics.fmean(s) for t, s in trials if len(s) == folds}
            best = max(means, key=means.get)
            if rules == ("asha",):
                trained, chosen = replay_asha(trials, folds, arms)
            else:
                trained, chosen = replay(trials, rules, folds, 0.01, arms)
            gap = (means[best] - means[chosen]) * 100
            cells.append(
                f"{trained / total:6.1%} " + ("same choice" if chosen == best else f"{gap:+.2f} pt")
            )
        name = "+".join(rules) + (f" (P <= {threshold:.2f})" if threshold is not None else "")
        print(f"{name:42s} " + " | ".join(cells))
    if args.orders:
        orders(runs, args.orders)
    return 0


if __name__ == "__main__":
    sys.exit(main())
