"""The racing scheduler (`search.scheduler: racing`): after each fold, a trial that is behind the
incumbent beyond doubt, or by more than the ROPE on the folds both ran, is stopped. Racing as in
F-race / irace and SMAC's intensification: every trial runs the same folds in the same order, so a
new trial is compared with the incumbent (the best trial that has run every fold) on the folds both
completed, paired.

A trial is stopped when any of the rules in use says so:
- `paired`: the corrected 95% interval of incumbent − trial (`paired.compare`) lies above 0;
  it needs 2 paired folds;
- `forgiving` (Bergman, Purucker & Hutter, AutoML 2024): the trial's running mean is below the
  incumbent's worst fold; it can decide after one fold;
- `cannot_win` (not a default rule): the correlated Bayesian posterior (`paired.compare`) gives
  the trial at most `CANNOT_WIN` = 10% probability of beating the incumbent by more than the ROPE,
  on 2 or more paired folds (racing with a region of practical equivalence, as in Bayesian
  racing). It stops the near-identical weak trials of a random start, but it also stops a trial
  that ties the incumbent on 4 folds and would have won on the 5th: near-zero spread reads as
  proof. In the replays below, adding it to the default rules saved 1.5 points of compute and
  added 9 of 240 orders whose choice was more than the ROPE behind none's (8 on one tweet sweep,
  where a 4-fold tie was stopped);
- `intensify` (SMAC's intensification, with the ROPE): on 2 or more paired folds, the trial's mean
  on the folds it shares with the incumbent is behind the incumbent's mean on those folds by more
  than the ROPE. No test of doubt: SMAC rejects a challenger as soon as it is worse on the shared
  instances; the ROPE and the 2 folds keep one unlucky fold from deciding, and a tie is never
  stopped. Chosen by replaying six sweeps (three on the tweet data, three on a noisy toy set) in
  40 random trial and fold orders each (`studies/racing_replay.py --orders`): the default rules
  trained 42.6% of none's folds on average and chose more than the ROPE behind none in 19 of the
  240 orders, all on one toy sweep; with `cannot_win` in place of `intensify` (the default
  before) 46.4% and 23; `paired` and `forgiving` alone 50.8% and 2. No rule here guarantees
  none's choice: a trial stopped behind on its first folds may have won on the rest.
The default rules are `paired`, `forgiving` and `intensify` (any one suffices).
A trial is never stopped before its first fold, at its last fold (it ends by itself), nor when
there is no incumbent yet; the incumbent has run all its folds and is never stopped. A stopped
trial ends like one ASHA stopped: PRUNED in the study, finished before selection if its partial
mean reaches the best complete mean (`ranking.contenders`)."""

from __future__ import annotations

import json
import math
from typing import Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from sft_tune.sweep.paired import compare

RULES = ("paired", "forgiving", "cannot_win", "intensify")
DEFAULT_RULES = ("paired", "forgiving", "intensify")
CANNOT_WIN = 0.10  # the most probability, for `cannot_win`, that the trial beats the incumbent


class RacingScheduler(FIFOScheduler):
    """Stops trials behind the incumbent beyond doubt (see the module). `folds`: every fold a
    trial runs (folds x repeats); `ratio`: n_test/n_train of a fold; `rules`: which tests may stop
    a trial (any one suffices); `known`: fold scores of trials that ran every fold before this
    scheduler was made (a resumed sweep), by trial id."""

    def __init__(
        self,
        folds: int,
        mode: str,
        rope: float,
        ratio: float,
        rules: tuple[str, ...] = DEFAULT_RULES,
        known: dict[str, list[float]] | None = None,
    ) -> None:
        super().__init__()
        self.folds, self.mode, self.rope, self.ratio, self.rules = folds, mode, rope, ratio, rules
        self.complete: dict[str, list[float]] = dict(known or {})
        self.stopped: dict[str, str] = {}  # trial id -> why (tests, the log)

    def incumbent(self) -> tuple[str, list[float]] | None:
        """The complete trial with the best mean (ties: the lower trial id)."""
        sign = -1 if self.mode == "max" else 1
        ranked = sorted(
            (sign * sum(scores) / len(scores), trial_id, scores)
            for trial_id, scores in self.complete.items()
        )
        return (ranked[0][1], ranked[0][2]) if ranked else None

    def on_trial_result(self, tune_controller, trial, result: dict[str, Any]) -> str:
        scores = _scores(result)
        trial_id = result.get("sweep_trial_id") or trial.trial_id
        if not scores or result.get("diverged"):
            return TrialScheduler.CONTINUE
        if len(scores) >= self.folds:
            self.complete[trial_id] = scores
            return TrialScheduler.CONTINUE
        why = self.behind(trial_id, scores)
        if why:
            self.stopped[trial_id] = why
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def behind(self, trial_id: str, scores: list[float]) -> str | None:
        """Why the trial with these fold scores is behind the incumbent beyond doubt, or None."""
        found = self.incumbent()
        if found is None or found[0] == trial_id:
            return None
        incumbent_id, best = found
        if "forgiving" in self.rules:
            mean, worst = (
                sum(scores) / len(scores),
                (min(best) if self.mode == "max" else max(best)),
            )
            if (mean < worst) if self.mode == "max" else (mean > worst):
                return (
                    f"running mean {mean:.4f} after {len(scores)} folds is worse than the "
                    f"incumbent {incumbent_id}'s worst fold {worst:.4f}"
                )
        gap = compare(best, scores, self.mode, self.rope, self.ratio)
        if gap.folds < 2:
            return None
        if "paired" in self.rules and gap.low is not None and gap.low > 0:
            return (
                f"behind the incumbent {incumbent_id} by {gap.mean:+.4f} "
                f"[{gap.low:.4f}, {gap.high:.4f}] on {gap.folds} paired folds"
            )
        if "cannot_win" in self.rules and gap.p_worse is not None and gap.p_worse <= CANNOT_WIN:
            return (
                f"P(beats the incumbent {incumbent_id} by more than the ROPE {self.rope:g}) = "
                f"{gap.p_worse:.2f} on {gap.folds} paired folds"
            )
        if "intensify" in self.rules and gap.mean > self.rope:
            return (
                f"behind the incumbent {incumbent_id} by {gap.mean:+.4f} on the {gap.folds} folds "
                f"both ran, more than the ROPE {self.rope:g}"
            )
        return None

    def debug_string(self) -> str:
        found = self.incumbent()
        return (
            f"Racing against {found[0] if found else 'no incumbent yet'} "
            f"({len(self.stopped)} stopped)."
        )


def _scores(result: dict[str, Any]) -> list[float]:
    raw = result.get("fold_scores")
    scores = json.loads(raw) if isinstance(raw, str) else list(raw or [])
    return [float(s) for s in scores if s is not None and math.isfinite(float(s))]
