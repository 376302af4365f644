"""`sft-tune report`: one self-contained HTML file of a sweep, plus a short terminal summary.

Plots: Optuna's optimization history and parallel coordinates of the searched parameters, alpha
against the CV score (Optuna's slice plot), the spread of fold scores per trial, and the best
trial's loss curves (L_lm and L_task through both phases). plotly.js is inlined, so the file opens
anywhere without a network.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go

from sft_tune.errors import fail
from sft_tune.sweep.folder import SweepFolder
from sft_tune.sweep.results import Status, Trial, best_trial, phase1_verdict, read_trials
from sft_tune.sweep.tracking import read_history

PLOTS = ("history", "parallel", "alpha", "folds", "losses")


def build_report(sweep_dir: Path, output: Path | None = None) -> tuple[Path, str]:
    """Write the HTML report; returns its path and the terminal summary."""
    folder = SweepFolder(Path(sweep_dir))
    folder.require_results("report")
    sweep = folder.load_sweep()
    trials = read_trials(folder)
    best = best_trial(sweep, trials)
    study = _open_study(folder, sweep.search.name, sweep.search.optuna_storage)
    alpha = "phase1.alpha" if "phase1.alpha" in sweep.params else next(iter(sweep.params))
    history = loss_history(folder, trials, best)
    sampled = {
        name
        for t in study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
        for name in t.params
    }
    figures = {
        "history": _titled(
            optuna.visualization.plot_optimization_history(study),
            f"Optimization history (CV {sweep.search.metric})",
        ),
        "parallel": _titled(
            optuna.visualization.plot_parallel_coordinate(study),
            "Parallel coordinates of the searched parameters",
        ),
        # alpha is sampled only for two-phase trials: with no complete one, there is nothing to plot
        "alpha": _titled(
            optuna.visualization.plot_slice(study, params=[alpha])
            if alpha in sampled
            else go.Figure(),
            f"{alpha} against the CV score"
            + ("" if alpha in sampled else f" (no complete trial sampled {alpha})"),
        ),
        "folds": fold_spread(trials, sweep.search.metric),
        "losses": loss_curves(history, best),
    }
    summary = terminal_summary(sweep, trials, best)
    output = Path(output) if output else folder.file(folder.REPORT)
    tmp = output.with_name(f".{output.name}.tmp")
    tmp.write_text(_page(sweep.search.name, summary, figures))
    os.replace(tmp, output)
    return output, summary


def _open_study(folder: SweepFolder, name: str, optuna_storage: str | None) -> optuna.Study:
    """The sweep's Optuna study, read only: a missing study.db is an input error, not a new
    empty database (Optuna's SQLite storage creates the file it is pointed at)."""
    url = folder.optuna_url(optuna_storage)
    db = Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None
    if db is not None and not db.is_file():
        raise fail(
            "SWEEP_DIR",
            str(folder.path),
            f"must hold the sweep's Optuna study ({db} does not exist)",
            "pass a folder written by `sft-tune search` (or resume that sweep to finish it)",
        )
    try:
        return optuna.load_study(study_name=name, storage=url)
    except KeyError:
        raise fail(
            "SWEEP_DIR",
            str(folder.path),
            f"its Optuna storage {db or url} must hold the study {name!r}",
            "pass the sweep folder whose search.name is that study's name",
        ) from None


def loss_history(
    folder: SweepFolder, trials: list[Trial], best: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """Per-step losses of the best configuration: its retrained model if selected, else its last fold."""
    selected = folder.file(folder.BEST_MODEL) / "history.jsonl"
    if selected.is_file():
        return [json.loads(line) for line in selected.read_text().splitlines()]
    if best is None:
        return []
    return read_history(next(t.checkpoint for t in trials if t.trial_id == best["trial_id"]))


def fold_spread(trials: list[Trial], metric: str) -> go.Figure:
    figure = go.Figure()
    for trial in trials:
        if trial.fold_scores:
            figure.add_trace(
                go.Box(
                    y=trial.fold_scores,
                    name=f"{trial.trial_id} ({trial.status.value.lower()})",
                    boxpoints="all",
                )
            )
    figure.update_layout(title=f"Fold {metric} per trial", yaxis_title=metric, showlegend=False)
    return figure


def loss_curves(history: list[dict[str, Any]], best: dict[str, Any] | None) -> go.Figure:
    """L_lm and L_task against the step through both phases (phase 2 continues the step axis)."""
    figure = go.Figure()
    offset = max((h["step"] for h in history if h["phase"] == 1), default=0)
    for key, label in (("lm_loss", "L_lm"), ("task_loss", "L_task"), ("loss", "total")):
        for phase in (1, 2):
            points = [
                (h["step"] + (offset if phase == 2 else 0), h[key])
                for h in history
                if h["phase"] == phase and h.get(key) == h.get(key)
            ]
            if points:
                xs, ys = zip(*points)
                figure.add_trace(
                    go.Scatter(x=xs, y=ys, mode="lines", name=f"{label} (phase {phase})")
                )
    if offset:
        figure.add_vline(x=offset + 0.5, line_dash="dot", annotation_text="phase 2")
    trial = best["trial_id"] if best else "none"
    figure.update_layout(
        title=f"Loss curves of the best configuration (trial {trial})",
        xaxis_title="step",
        yaxis_title="loss",
    )
    return figure


def terminal_summary(sweep, trials: list[Trial], best: dict[str, Any] | None) -> str:
    counts = {status.value: sum(t.status is status for t in trials) for status in Status}
    lines = [
        f"sweep {sweep.search.name}: {len(trials)} trials ({', '.join(f'{n} {s.lower()}' for s, n in counts.items() if n)}), {sweep.search.folds}-fold CV of {sweep.search.metric}"
    ]
    if best:
        lines.append(
            f"best trial {best['trial_id']}: {best['cv_mean']:.4f} ± {best['cv_std']:.4f}; "
            + ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in best["params"].items()
            )
        )
    lines.append(f"phase 1: {phase1_verdict(sweep, trials)['statement']}")
    lines += [f"trial {t.trial_id} ERROR: {t.error}" for t in trials if t.error]
    return "\n".join(lines)


def _titled(figure: go.Figure, title: str) -> go.Figure:
    figure.update_layout(title=title)
    return figure


def _page(name: str, summary: str, figures: dict[str, go.Figure]) -> str:
    parts = []
    for i, (key, figure) in enumerate(figures.items()):
        body = figure.to_html(
            full_html=False, include_plotlyjs="inline" if i == 0 else False, div_id=f"plot-{key}"
        )
        parts.append(f'<section class="plot" data-plot="{key}">{body}</section>')
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>sft-tune sweep {html.escape(name)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}pre{background:#f4f4f4;padding:1em}</style></head><body>"
        f"<h1>Sweep {html.escape(name)}</h1><pre>{html.escape(summary)}</pre>{''.join(parts)}</body></html>"
    )
