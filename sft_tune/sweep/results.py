"""What a sweep found: the trial table, the best configuration, the phase-1 verdict, the files."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sft_tune.space import Sweep, with_params
from sft_tune.sweep.folder import SweepFolder
from sft_tune.sweep.searcher import optuna_states


@dataclass
class SweepResult:
    """What a finished (or interrupted) sweep produced."""

    sweep_dir: Path
    trials: list[dict[str, Any]]
    best: dict[str, Any] | None
    tokenization_passes: int
    complete: bool
    optuna_states: dict[str, int] = field(default_factory=dict)


def summarize(sweep: Sweep, folder: SweepFolder, results, tokenization_passes: int) -> SweepResult:
    """Trial table, best configuration and sweep summary, written to the sweep folder."""
    folds = sweep.search.folds
    trials = []
    events = folder.events()
    for result in results:
        metrics = result.metrics or {}
        done = int(metrics.get("folds_done", 0))
        status = "ERROR" if result.error else ("COMPLETE" if done == folds else ("STOPPED" if done else "NOT RUN"))
        params = {k: v for k, v in (result.config or {}).items() if k in sweep.params}
        trials.append({
            "trial_id": (trial_id := metrics.get("trial_id") or _trial_id_from_path(result.path)),
            "status": status,
            "attempts": sum(e["event"] == "start" and e["trial_id"] == trial_id for e in events),
            "folds_done": done,
            "cv_mean": metrics.get("cv_mean"),
            "cv_std": metrics.get("cv_std"),
            "fold_scores": json.loads(metrics.get("fold_scores", "[]")),
            "error": str(result.error).splitlines()[0] if result.error else None,
            "worker_tokenization_passes": metrics.get("worker_tokenization_passes", 0),
            **{f"param:{k}": v for k, v in params.items()},
        })
    trials.sort(key=lambda t: t["trial_id"])
    best = best_trial(sweep, trials)
    states = optuna_states(sweep.search.name, folder.optuna_url(sweep.search.optuna_storage))
    passes = tokenization_passes + sum(t["worker_tokenization_passes"] for t in trials)
    complete = sum(t["status"] in ("COMPLETE", "STOPPED", "ERROR") for t in trials) >= sweep.search.num_trials
    write_outputs(sweep, folder, trials, best, passes, complete, states)
    return SweepResult(folder.path, trials, best, passes, complete, states)


def _trial_id_from_path(path: str) -> str:
    """Tune names trial folders `<trainable>_<trial id>_<n>_...`; the trainable here is run_trial."""
    return Path(path).name.removeprefix("run_trial_").split("_")[0]


def best_trial(sweep: Sweep, trials: list[dict]) -> dict[str, Any] | None:
    """Best finished trial by CV mean; ties go to the lower standard deviation, then the earlier trial."""
    finished = [t for t in trials if t["status"] == "COMPLETE"]
    if not finished:
        return None
    sign = -1 if sweep.search.mode == "max" else 1
    top = min(finished, key=lambda t: (sign * t["cv_mean"], t["cv_std"], t["trial_id"]))
    params = {k.removeprefix("param:"): v for k, v in top.items() if k.startswith("param:")}
    return {**{k: top[k] for k in ("trial_id", "cv_mean", "cv_std", "fold_scores")}, "metric": sweep.search.metric, "params": params, "config": with_params(sweep.base, params)}


def phase1_verdict(sweep: Sweep, trials: list[dict]) -> dict[str, Any]:
    """Did the best configuration use phase 1, and by how much did it beat the best plain
    fine-tune (phase1.steps = 0) of the same sweep? Both judged by CV mean on COMPLETE trials."""
    finished = [t for t in trials if t["status"] == "COMPLETE"]
    sign = 1 if sweep.search.mode == "max" else -1

    def steps(trial: dict) -> int:
        params = {k.removeprefix("param:"): v for k, v in trial.items() if k.startswith("param:")}
        return int(with_params(sweep.base, params).get("phase1", {}).get("steps", 200))

    def top(group: list[dict]) -> dict | None:
        return max(group, key=lambda t: (sign * t["cv_mean"], -t["cv_std"])) if group else None

    two_phase, plain = top([t for t in finished if steps(t) > 0]), top([t for t in finished if steps(t) == 0])
    metric = sweep.search.metric
    verdict: dict[str, Any] = {
        "best_two_phase": two_phase and {"trial_id": two_phase["trial_id"], "cv_mean": two_phase["cv_mean"]},
        "best_plain": plain and {"trial_id": plain["trial_id"], "cv_mean": plain["cv_mean"]},
        "best_uses_phase1": None,
        "margin": None,
    }
    if two_phase and plain:
        margin = sign * (two_phase["cv_mean"] - plain["cv_mean"])
        uses = margin > 0
        verdict.update(best_uses_phase1=uses, margin=margin)
        if uses:
            verdict["statement"] = f"the best configuration uses phase 1: CV {metric} {two_phase['cv_mean']:.4f} vs {plain['cv_mean']:.4f} for the best plain fine-tune (phase1.steps 0), a margin of {margin:+.4f}"
        else:
            verdict["statement"] = f"phase 1 did not help on this data: the best plain fine-tune (phase1.steps 0) scored CV {metric} {plain['cv_mean']:.4f}, the best two-phase configuration {two_phase['cv_mean']:.4f} ({margin:+.4f})"
    elif two_phase or plain:
        kind = "two-phase" if two_phase else "plain (phase1.steps 0)"
        other = "a plain fine-tune (phase1.steps 0)" if two_phase else "a configuration with phase 1"
        verdict["best_uses_phase1"] = bool(two_phase)
        verdict["statement"] = f"only {kind} configurations finished, so this sweep cannot say whether phase 1 helps; let phase1.steps reach 0 and above so that {other} is tried too"
    else:
        verdict["statement"] = "no trial finished all folds"
    return verdict


def write_outputs(sweep: Sweep, folder: SweepFolder, trials, best, passes: int, complete: bool, states) -> None:
    columns = ["trial_id", "status", "attempts", "folds_done", "cv_mean", "cv_std", "fold_scores", "error"] + sorted({k for t in trials for k in t if k.startswith("param:")})
    with open(folder.file(folder.TRIALS_CSV), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({**t, "fold_scores": json.dumps(t["fold_scores"])} for t in trials)
    folder.file(folder.TRIALS_JSON).write_text(json.dumps(trials, indent=2))
    if best is not None:
        folder.file(folder.BEST).write_text(json.dumps({k: v for k, v in best.items() if k != "config"}, indent=2))
        folder.file(folder.BEST_CONFIG).write_text(yaml.safe_dump(best["config"], sort_keys=False))
    summary = {"sweep_dir": str(folder.path), "complete": complete, "trials": len(trials), "tokenization_passes": passes, "optuna_states": states, "statuses": {s: sum(t["status"] == s for t in trials) for s in ("COMPLETE", "STOPPED", "ERROR", "NOT RUN")}, "best": {k: v for k, v in (best or {}).items() if k != "config"} or None, "phase1": phase1_verdict(sweep, trials)}
    folder.file(folder.SUMMARY).write_text(json.dumps(summary, indent=2))


def format_table(result: SweepResult) -> str:
    """The trial table for the terminal."""
    params = sorted({k for t in result.trials for k in t if k.startswith("param:")})
    header = ["trial", *[p.removeprefix("param:") for p in params], "cv mean ± std", "folds", "status"]
    rows = []
    for t in result.trials:
        score = f"{t['cv_mean']:.4f} ± {t['cv_std']:.4f}" if t["cv_mean"] is not None else "-"
        rows.append([t["trial_id"], *[_short(t.get(p)) for p in params], score, str(t["folds_done"]), t["status"]])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in [header, *rows]]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
