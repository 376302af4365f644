"""What a sweep ends with: its best configuration, the phase-1 verdict and the summary, written to
the sweep folder (`summary.json`, `best.json`, `best_config.yaml`, the trial files)."""

from __future__ import annotations

import json
from typing import Any

import yaml

from sft_tune.sweep.folder import SweepFolder
from sft_tune.sweep.ranking import best_trial, phase1_verdict
from sft_tune.sweep.records import Status, SweepResult, Trial, search_ended, write_trials
from sft_tune.sweep.space import Sweep


def summarize(
    sweep: Sweep,
    folder: SweepFolder,
    trials: list[Trial],
    tokenization_passes: int,
    lm_data: dict[str, Any] | None = None,
    encodings: int = 1,
) -> SweepResult:
    """Best configuration, verdict and sweep summary of the trials, written to the sweep folder."""
    from sft_tune.sweep.searcher import optuna_states  # imports Ray Tune: only when a sweep ends

    best = best_trial(sweep, trials)
    states = optuna_states(sweep.search.name, folder.optuna_url(sweep.search.optuna_storage))
    passes = tokenization_passes + sum(t.worker_tokenization_passes for t in trials)
    complete = search_ended(sweep, trials)
    verdict = phase1_verdict(sweep, trials, best and best["choice"])
    write_trials(folder, trials)
    if best is not None:
        folder.file(folder.BEST).write_text(
            json.dumps({k: v for k, v in best.items() if k != "config"}, indent=2)
        )
        folder.file(folder.BEST_CONFIG).write_text(yaml.safe_dump(best["config"], sort_keys=False))
    summary = {
        "sweep_dir": str(folder.path),
        "complete": complete,
        "trials": len(trials),
        "tokenization_passes": passes,
        "encodings": encodings,
        "lm_data": lm_data,
        "optuna_states": states,
        "statuses": {s.value: sum(t.status is s for t in trials) for s in Status},
        "finished_after_stop": [t.trial_id for t in trials if t.finished_after_stop],
        "best": {k: v for k, v in (best or {}).items() if k != "config"} or None,
        "phase1": verdict,
    }
    folder.file(folder.SUMMARY).write_text(json.dumps(summary, indent=2))
    return SweepResult(folder.path, trials, best, passes, complete, states, verdict)
