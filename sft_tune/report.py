"""`sft-tune report`: one self-contained HTML file of a sweep, plus a short terminal summary.

The page opens with the facts (the phase-1 verdict, the best trial, the test metrics of the model
`sft-tune select` retrained), then a table of every trial (status, folds done, CV mean ± std, its
parameters, what a failed one died of), then the plots of `report_plots`. plotly.js is inlined,
so the file opens anywhere without a network.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from sft_tune.errors import fail
from sft_tune.report_plots import (
    folds_plot,
    history_plot,
    loss_plot,
    parallel_plot,
    params_plot,
    partial,
    phase1_plot,
    scored,
)
from sft_tune.sweep.folder import SweepFolder
from sft_tune.sweep.ranking import best_trial, choice_text, phase1_verdict, table_key
from sft_tune.sweep.records import Status, Trial, read_trials
from sft_tune.sweep.space import Sweep, phase1_only

PLOTS = ("history", "params", "parallel", "folds", "phase1", "losses")
STATUS_TEXT = {
    Status.COMPLETE: "complete",
    Status.STOPPED: "stopped early",
    Status.ERROR: "error",
    Status.INTERRUPTED: "interrupted",
    Status.NOT_RUN: "not run",
    Status.DIVERGED: "diverged (NaN or infinite loss or score)",
}


def build_report(
    sweep_dir: str | Path | SweepFolder, output: Path | None = None
) -> tuple[Path, str]:
    """Write the HTML report (of a sweep folder, or of a sweep's home on URI storage, where the
    report is uploaded too unless `output` puts it elsewhere); returns its path and the terminal
    summary."""
    folder = (
        sweep_dir
        if isinstance(sweep_dir, SweepFolder)
        else SweepFolder.open(sweep_dir, "SWEEP_DIR", model_files=SweepFolder.REPORT_READS)
    )
    folder.require_results("report")
    sweep = folder.load_sweep()
    trials = read_trials(folder)
    numbers = start_order(
        _open_study(folder, sweep.search.name, sweep.search.optuna_storage), folder, trials
    )
    best = best_trial(sweep, trials)
    best_id = best and best["trial_id"]
    selected = selected_model(folder)
    verdict = phase1_verdict(sweep, trials, best and best["choice"])
    facts = key_facts(sweep, trials, numbers, best, selected, verdict)
    history, source = loss_history(folder, trials, best, selected)
    figures = {
        "history": history_plot(sweep, trials, numbers, best_id),
        "params": params_plot(sweep, trials, numbers, best_id),
        "parallel": parallel_plot(sweep, trials),
        "folds": folds_plot(sweep, trials, numbers),
        "phase1": phase1_plot(verdict, sweep.search.metric, sweep.search.rope),
        "losses": loss_plot(
            history,
            phase1_alphas(history, best["config"] if best else {}),
            source,
            plain=bool(best) and sweep.steps_of(best["params"]) == 0,
        ),
    }
    output = Path(output) if output else folder.file(folder.REPORT)
    tmp = output.with_name(f".{output.name}.tmp")
    table = trials_table(sweep, trials, numbers, best_id)
    tmp.write_text(_page(folder, sweep, facts, table, figures))
    os.replace(tmp, output)
    if output == folder.file(folder.REPORT):
        folder.sync([folder.REPORT], strict=True)
    return output, terminal_summary(sweep, trials, facts)


def _open_study(folder: SweepFolder, name: str, optuna_storage: str | None):
    """The sweep's Optuna study, read only: a missing study.db is an input error, not a new
    empty database (Optuna's SQLite storage creates the file it is pointed at)."""
    import optuna

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


def start_order(study, folder: SweepFolder, trials: list[Trial]) -> dict[str, int]:
    """Each trial's 1-based number in the order it was sampled (its Optuna trial number), as the
    search's console numbered them; a trial unknown to the study by its first start event."""
    rank: dict[str, tuple[int, int]] = {}
    for frozen in study.trials:
        rank.setdefault(frozen.user_attrs.get("tune_trial_id"), (0, frozen.number))
    for i, event in enumerate(folder.events()):
        if event["event"] == "start":
            rank.setdefault(event["trial_id"], (1, i))
    ordered = sorted(trials, key=lambda t: (rank.get(t.trial_id, (2, 0)), t.trial_id))
    return {t.trial_id: i for i, t in enumerate(ordered, 1)}


def selected_model(folder: SweepFolder) -> dict[str, Any] | None:
    """`best_model/best.json` of `sft-tune select` (its test metrics), None before select ran."""
    path = folder.file(folder.BEST_MODEL) / folder.BEST
    return json.loads(path.read_text()) if path.is_file() else None


def loss_history(
    folder: SweepFolder,
    trials: list[Trial],
    best: dict[str, Any] | None,
    selected: dict[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], str]:
    """Per-step losses of the best configuration and where they come from: its model retrained by
    `select` when that is the current best, else the last fold the trial trained."""
    if best is None:
        return [], "no complete trial"
    retrained = folder.file(folder.BEST_MODEL) / "history.jsonl"
    if retrained.is_file() and selected and selected.get("trial_id") == best["trial_id"]:
        lines = retrained.read_text().splitlines()
        return [json.loads(line) for line in lines], f"trial {best['trial_id']} retrained by select"
    from sft_tune.sweep.tracking import read_history

    trial = next(t for t in trials if t.trial_id == best["trial_id"])
    return read_history(trial.checkpoint), f"trial {best['trial_id']}, its last fold"


def phase1_alphas(history: list[dict[str, Any]], config: dict[str, Any]) -> list[float | None]:
    """α of each phase-1 step: as the step recorded it, else from the config's α schedule."""
    if all("alpha" in h for h in history if h["phase"] == 1):
        return [h.get("alpha") for h in history]
    from sft_tune.core.losses import alpha_at
    from sft_tune.runconfig import parse_config

    p1 = parse_config(config).phase1
    return [
        alpha_at(h["step"], p1.steps, p1.alpha, p1.alpha_schedule) if h["phase"] == 1 else None
        for h in history
    ]


def key_facts(
    sweep: Sweep,
    trials: list[Trial],
    numbers: dict[str, int],
    best: dict[str, Any] | None,
    selected: dict[str, Any] | None,
    verdict: dict[str, Any],
) -> list[tuple[str, str]]:
    """(label, text) of what a reader needs first, shared by the page and the terminal."""
    metric, folds = sweep.search.metric, sweep.search.cv_folds
    facts = [("phase 1", verdict["statement"])]
    if best is None:
        facts.append(("best trial", f"none: no trial finished all {folds} folds"))
    else:
        facts.append(
            (
                "best trial",
                f"{numbers[best['trial_id']]} ({best['trial_id']}): CV {metric} "
                f"{best['cv_mean']:.4f} ± {best['cv_std']:.4f} over {folds} folds; "
                + ", ".join(f"{k}={_short(v)}" for k, v in best["params"].items()),
            )
        )
        facts.append(("choice", choice_text(best["choice"], metric)))
    facts.append(("test metrics", _test_text(sweep, best, selected)))
    counts = [f"{n} {STATUS_TEXT[s]}" for s in Status if (n := sum(t.status is s for t in trials))]
    facts.append(
        (
            "trials",
            f"{len(trials)} ({', '.join(counts) or 'none'}); {folds}-fold CV of {metric}, "
            f"{'higher' if sweep.search.mode == 'max' else 'lower'} is better",
        )
    )
    return facts


def _test_text(sweep: Sweep, best: dict[str, Any] | None, selected: dict[str, Any] | None) -> str:
    if selected is None:
        return (
            "none yet: `sft-tune select` has not run on this sweep (it retrains the best "
            "configuration on all labelled data and scores it on data.test)"
        )
    test = selected.get("test") or {}
    order = sorted(test, key=lambda k: (k != sweep.search.metric, k))
    text = (
        ", ".join(f"{k} {_metric(test[k])}" for k in order)
        if test
        else "none: the config has no data.test file"
    )
    text += f" (trial {selected['trial_id']} retrained on all labelled data, in best_model/)"
    if best and selected.get("trial_id") != best["trial_id"]:
        text += f"; the best trial is now {best['trial_id']}: rerun `sft-tune select`"
    return text


def terminal_summary(sweep: Sweep, trials: list[Trial], facts: list[tuple[str, str]]) -> str:
    """The key facts, one a line, then each failed trial's error."""
    lines = [f"sweep {sweep.search.name}"] + [f"{label}: {text}" for label, text in facts]
    lines += [f"trial {t.trial_id} ERROR: {t.error}" for t in trials if t.error]
    return "\n".join(lines)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _metric(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else str(value)


def _score_cell(trial: Trial, folds: int) -> str:
    if not scored(trial):
        return "—"
    text = html.escape(f"{trial.cv_mean:.4f} ± {trial.cv_std or 0:.4f}")
    return text + (" <span class='note'>partial</span>" if partial(trial, folds) else "")


def trials_table(
    sweep: Sweep, trials: list[Trial], numbers: dict[str, int], best_id: str | None
) -> str:
    """HTML table of every trial, best first: complete ones by rank, then partial means, then
    those without a score; a failed trial's error follows on a row of its own."""
    folds, mode = sweep.search.cv_folds, sweep.search.mode
    ranked = sorted(trials, key=lambda t: table_key(t, folds, mode))
    head = ["#", "trial", "status", "folds", f"CV {sweep.search.metric} mean ± std", *sweep.params]
    rows = []
    for t in ranked:
        status = STATUS_TEXT[t.status]
        status += " (finished after an early stop)" if t.finished_after_stop else ""
        cells = [
            ("num", str(numbers[t.trial_id])),
            ("", html.escape(t.trial_id) + (" ★ best" if t.trial_id == best_id else "")),
            ("", html.escape(status)),
            ("num", f"{t.folds_done} of {folds}"),
            ("num partial" if partial(t, folds) else "num", _score_cell(t, folds)),
        ]
        for name in sweep.params:
            if phase1_only(name) and sweep.steps_of(t.params) == 0:
                cells.append(("num muted", "n/a"))  # phase 1 skipped: the value does nothing
            else:
                cells.append(("num", html.escape(_short(t.params.get(name, "—")))))
        kind = ' class="best"' if t.trial_id == best_id else ""
        row = "".join(f'<td class="{c}">{v}</td>' for c, v in cells)
        rows.append(f"<tr{kind}>{row}</tr>")
        if t.error:
            error = f'<td colspan="{len(head) - 1}">{html.escape(t.error)}</td>'
            rows.append(f'<tr class="error"><td></td>{error}</tr>')
    header = "".join(f"<th>{html.escape(h).replace('.', '.<wbr>')}</th>" for h in head)
    return (
        f'<table class="trials"><thead><tr>{header}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


STYLE = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;color:#1f2328;margin:0 auto;
  padding:1.5em;max-width:1400px;line-height:1.45}
h1{margin:.2em 0;overflow-wrap:anywhere}h2{margin:1.4em 0 .5em}
.meta{color:#59636e;overflow-wrap:anywhere}
.summary{background:#f6f8fa;border:1px solid #d1d9e0;border-radius:6px;padding:.8em 1.2em;
  max-width:100%;overflow-wrap:anywhere}
.summary dl{display:grid;grid-template-columns:max-content minmax(0,1fr);gap:.4em 1em;margin:0}
.summary dt{font-weight:600}.summary dd{margin:0;min-width:0}
.scroll{max-width:100%;overflow-x:auto}
table.trials{border-collapse:collapse;font-size:.88em}
table.trials th,table.trials td{padding:.3em .6em;border-bottom:1px solid #e1e4e8;text-align:left;
  vertical-align:top}
table.trials th{background:#f6f8fa;position:sticky;top:0}
td.num{font-variant-numeric:tabular-nums;white-space:nowrap}
td.partial{color:#9a6700}td.muted{color:#8c959f}
.note{font-size:.85em;font-style:italic}
tr.best td{background:#fff8c5;font-weight:600}
tr.error td{color:#b31d28;border-bottom:1px solid #e1e4e8;overflow-wrap:anywhere;font-size:.95em}
section.plot{margin-top:1.5em;max-width:100%}
"""


def _page(
    folder: SweepFolder,
    sweep: Sweep,
    facts: list[tuple[str, str]],
    table: str,
    figures: dict[str, go.Figure],
) -> str:
    """The whole page: title, key facts, the trials table, then each plot in its section."""
    name, search = sweep.search.name, sweep.search
    parts = []
    for i, (key, figure) in enumerate(figures.items()):
        body = figure.to_html(
            full_html=False,
            include_plotlyjs="inline" if i == 0 else False,
            div_id=f"plot-{key}",
            config={"responsive": True, "displaylogo": False},
        )
        parts.append(f'<section class="plot" data-plot="{key}">{body}</section>')
    meta = (
        f"{search.num_trials} trials planned, {search.folds}-fold CV"
        + (f" repeated {search.repeats} times" if search.repeats > 1 else "")
        + f" of {search.metric}, ROPE {search.rope:g}, choice rule {search.select}, sampler "
        f"{search.sampler}, scheduler {search.scheduler}; sweep folder {folder.path}"
    )
    facts_html = "".join(
        f"<dt>{html.escape(label)}</dt><dd>{html.escape(text)}</dd>" for label, text in facts
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>sft-tune sweep {html.escape(name)}</title><style>{STYLE}</style></head><body>"
        f"<h1>Sweep {html.escape(name)}</h1><p class='meta'>{html.escape(meta)}</p>"
        f"<div class='summary' id='summary'><dl>{facts_html}</dl></div>"
        f"<h2>Trials</h2><div class='scroll'>{table}</div>"
        f"<h2>Plots</h2>{''.join(parts)}</body></html>"
    )
