#!/usr/bin/env python
"""Replays the fold scores of finished `none` sweeps under racing rules, without training:

    .venv/bin/python studies/racing_replay.py FOLDER [FOLDER ...]

FOLDER holds sweeps/sched-none-SEED/events.jsonl, as `bench/sweep.py --parts 2 --keep` leaves
them. The trials ran one at a time (max_concurrent 1), so the replay is exact: each trial meets
the incumbent the racing scheduler would have had at that moment (the best trial that ran every
fold so far), and is stopped after the first fold at which `RacingScheduler.behind` says so. A
stopped trial whose partial mean reaches the best complete mean is finished before selection
(its remaining folds counted), as in a sweep. For each rule set: the share of none's folds
trained, and whether the chosen configuration is none's (else how far behind, in points)."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sft_tune.sweep import racing  # noqa: E402
from sft_tune.sweep.racing import RacingScheduler  # noqa: E402

RULE_SETS = [
    ("paired", "forgiving"),
    ("forgiving",),
    ("paired",),
    ("cannot_win",),
    ("paired", "forgiving", "cannot_win"),
]
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
    return [(t, scores[t]) for t in order]


def replay(trials, rules, folds: int, rope: float) -> tuple[int, str]:
    race = RacingScheduler(folds, "max", rope, 1 / (folds - 1), rules=rules)
    stopped, trained = {}, 0
    for trial_id, scores in trials:
        ran = len(scores)
        for j in range(1, len(scores)):
            if race.behind(trial_id, scores[:j]):
                ran = j
                stopped[trial_id] = scores[:j]
                break
        trained += ran
        if ran == len(scores):
            race.complete[trial_id] = scores
    best = max(statistics.fmean(s) for s in race.complete.values())
    for trial_id, partial in stopped.items():
        if statistics.fmean(partial) >= best:  # a contender: finished before selection
            trained += folds - len(partial)
            race.complete[trial_id] = dict(trials)[trial_id]
    chosen = max(race.complete, key=lambda t: statistics.fmean(race.complete[t]))
    return trained, chosen


def main() -> int:
    paths = sorted(p for folder in sys.argv[1:] for p in Path(folder).glob("sweeps/sched-none-*/events.jsonl"))  # fmt: skip
    if not paths:
        sys.exit("no sweeps/sched-none-*/events.jsonl under the folders given")
    runs = [(p.parent.name, trials_of(p)) for p in paths]
    print("sweeps:", ", ".join(f"{name} ({len(t)} trials)" for name, t in runs))
    variants = [(rules, None) for rules in RULE_SETS if "cannot_win" not in rules] + [
        (rules, threshold)
        for rules in RULE_SETS
        if "cannot_win" in rules
        for threshold in THRESHOLDS
    ]
    for rules, threshold in variants:
        if threshold is not None:
            racing.CANNOT_WIN = threshold
        cells = []
        for _, trials in runs:
            folds = max(len(s) for _, s in trials)
            total = sum(len(s) for _, s in trials)
            means = {t: statistics.fmean(s) for t, s in trials if len(s) == folds}
            best = max(means, key=means.get)
            trained, chosen = replay(trials, rules, folds, rope=0.01)
            gap = (
                "same choice"
                if chosen == best
                else f"{(means[best] - means[chosen]) * 100:+.2f} pt"
            )
            cells.append(f"{trained / total:6.1%} {gap}")
        name = "+".join(rules) + (f" (P <= {threshold:.2f})" if threshold is not None else "")
        print(f"{name:42s} " + " | ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
