"""The plots of `sft-tune report`, drawn from the sweep's trial records (not Optuna's plots): they
show the trials that the scheduler stopped early with their partial means, marked as partial,
fit their axes to the values shown, and plot a phase-1-only parameter (`space.phase1_only`) for
the two-phase trials alone, since it does nothing when phase1.steps is 0."""

from __future__ import annotations

import math
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from sft_tune.sweep.records import Status, Trial
from sft_tune.sweep.space import Param, Sweep, phase1_only

COMPLETE = {"symbol": "circle", "size": 10, "color": "#1f77b4"}
PARTIAL = {"symbol": "circle-open", "size": 10, "color": "#e08a00", "line": {"width": 2}}
BEST = {"symbol": "star", "size": 16, "color": "#d62728"}
FAILED = {"symbol": "x-thin-open", "size": 12, "color": "#888888", "line": {"width": 2}}
FOLD_COLORS = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
NOT_APPLICABLE = "n/a (plain)"


def scored(trial: Trial) -> bool:
    """Whether a trial has a CV mean (of all its folds, or a partial one) that can be ranked: a
    diverged trial's is shown with the failed ones."""
    return (
        trial.status is not Status.DIVERGED
        and trial.cv_mean is not None
        and math.isfinite(trial.cv_mean)
    )


def partial(trial: Trial, folds: int) -> bool:
    return scored(trial) and trial.folds_done < folds


def fitted(values: list[float], pad: float = 0.08) -> list[float] | None:
    """An axis range around `values` with a margin; a lone value gets a small span of its own
    (plotly's default for one point, -0.4..1.6 around a trial number, hides what it shows)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None
    low, high = min(values), max(values)
    if high == low:
        half = max(abs(low) * 0.05, 0.01)
        return [low - half, high + half]
    return [low - pad * (high - low), high + pad * (high - low)]


def _hover(trial: Trial, number: int, folds: int) -> str:
    score = f"{trial.cv_mean:.4f} ± {trial.cv_std or 0:.4f}" if scored(trial) else "no score"
    note = f" (partial: {trial.folds_done} of {folds} folds)" if partial(trial, folds) else ""
    return f"trial {number} ({trial.trial_id})<br>{score}{note}"


def _score_traces(
    points: list[tuple[Trial, Any]], numbers: dict[str, int], folds: int, best_id: str | None
) -> list[go.Scatter]:
    """Markers of (trial, x) against the CV mean: complete filled, partial open, the best a star."""
    groups = (
        ("complete (all folds)", lambda t: not partial(t, folds), COMPLETE),
        ("partial mean (stopped early)", lambda t: partial(t, folds), PARTIAL),
        ("best", lambda t: t.trial_id == best_id, BEST),
    )
    traces = []
    for name, keep, marker in groups:
        chosen = [(t, x) for t, x in points if keep(t)]
        traces.append(
            go.Scatter(
                x=[x for _, x in chosen],
                y=[t.cv_mean for t, _ in chosen],
                mode="markers",
                marker=marker,
                name=name,
                legendgroup=name,
                text=[_hover(t, numbers[t.trial_id], folds) for t, _ in chosen],
                hovertemplate="%{text}<extra></extra>",
            )
        )
    return traces


def history_plot(
    sweep: Sweep, trials: list[Trial], numbers: dict[str, int], best_id: str | None
) -> go.Figure:
    """CV mean ± std of each trial in start order, the best complete mean so far, and a cross
    on the axis for each trial without a score."""
    folds, metric = sweep.search.cv_folds, sweep.search.metric
    shown = sorted((t for t in trials if scored(t)), key=lambda t: numbers[t.trial_id])
    figure = go.Figure(
        _score_traces([(t, numbers[t.trial_id]) for t in shown], numbers, folds, best_id)
    )
    stds = {numbers[t.trial_id]: t.cv_std or 0 for t in shown}
    for trace in figure.data[:2]:  # complete and partial: the star sits on one of them
        trace.error_y = {"array": [stds[x] for x in trace.x], "thickness": 1, "width": 3}
    figure.add_trace(_best_so_far(shown, numbers, folds, sweep.search.mode))
    y_range = fitted([t.cv_mean + s * (t.cv_std or 0) for t in shown for s in (-1, 1)])
    failed = [t for t in trials if not scored(t) and t.trial_id in numbers]
    if failed and y_range:
        figure.add_trace(
            go.Scatter(
                x=[numbers[t.trial_id] for t in failed],
                y=[y_range[0]] * len(failed),
                mode="markers",
                marker=FAILED,
                name="no score (error, not run)",
                text=[
                    f"trial {numbers[t.trial_id]} ({t.trial_id}): {t.status.value}" for t in failed
                ],
                hovertemplate="%{text}<extra></extra>",
                cliponaxis=False,
            )
        )
    figure.update_layout(
        title=f"CV {metric} of each trial, in start order (open markers: partial means)",
        xaxis=_trial_axis(len(numbers)),
        yaxis={"title": f"CV {metric} (mean ± std)", "range": y_range},
    )
    return figure


def _best_so_far(shown: list[Trial], numbers: dict[str, int], folds: int, mode: str) -> go.Scatter:
    """A step line of the best complete CV mean up to each trial (partial means never count)."""
    pick = max if mode == "max" else min
    running, xs, ys = None, [], []
    for trial in shown:
        if not partial(trial, folds):
            running = trial.cv_mean if running is None else pick(running, trial.cv_mean)
        if running is not None:
            xs.append(numbers[trial.trial_id])
            ys.append(running)
    line = {"shape": "hv", "color": "#555", "dash": "dot"}
    return go.Scatter(
        x=xs, y=ys, mode="lines", line=line, name="best complete so far", hoverinfo="skip"
    )


def _trial_axis(count: int) -> dict[str, Any]:
    axis = {"title": "trial (start order)", "range": [0.5, max(count, 1) + 0.5]}
    return {**axis, "dtick": 1} if count <= 30 else axis


def _param_axis(param: Param, values: list[Any]) -> dict[str, Any]:
    """The x axis of a searched parameter: its search range (log when searched on a log scale)
    widened to any value outside it; the choices in order for a categorical one."""
    if param.type == "categorical":
        return {"type": "category", "categoryarray": [str(c) for c in param.choices]}
    low, high = min([param.low, *values]), max([param.high, *values])
    if param.log:
        return {"type": "log", "range": fitted([math.log10(low), math.log10(high)], pad=0.05)}
    axis = {"range": fitted([low, high], pad=0.05)}
    step = param.step or 1
    return {**axis, "dtick": step} if param.type == "int" and (high - low) / step <= 12 else axis


def params_plot(
    sweep: Sweep, trials: list[Trial], numbers: dict[str, int], best_id: str | None
) -> go.Figure:
    """Each searched parameter against the CV mean, one panel per parameter; a phase-1-only
    parameter is drawn for the two-phase trials only."""
    folds, metric = sweep.search.cv_folds, sweep.search.metric
    names = list(sweep.params)
    cols = min(len(names), 3)
    rows = -(-len(names) // cols)
    titles = [f"{n}<br><sup>two-phase trials only</sup>" if phase1_only(n) else n for n in names]
    height = 140 + 320 * rows
    figure = make_subplots(
        rows=rows, cols=cols, subplot_titles=titles, vertical_spacing=110 / height
    )
    shown = [t for t in trials if scored(t)]
    y_range = fitted([t.cv_mean for t in shown])
    legend: set[str] = set()  # each kind of marker once, from the first panel that has one
    for i, name in enumerate(names):
        row, col = divmod(i, cols)
        points = [
            (t, _categorical(t.params[name], sweep.params[name]))
            for t in shown
            if name in t.params and (not phase1_only(name) or sweep.steps_of(t.params) > 0)
        ]
        for trace in _score_traces(points, numbers, folds, best_id):
            trace.showlegend = bool(trace.x) and trace.name not in legend
            legend.update([trace.name] if trace.showlegend else [])
            figure.add_trace(trace, row=row + 1, col=col + 1)
        axis = _param_axis(sweep.params[name], [x for _, x in points if not isinstance(x, str)])
        figure.update_xaxes(axis, row=row + 1, col=col + 1)
        figure.update_yaxes(
            range=y_range, title=f"CV {metric}" if col == 0 else None, row=row + 1, col=col + 1
        )
    figure.update_layout(
        title="Searched parameters against the CV score (open markers: partial means)",
        height=height,
    )
    return figure


def _categorical(value: Any, param: Param) -> Any:
    return str(value) if param.type == "categorical" else value


def parallel_plot(sweep: Sweep, trials: list[Trial]) -> go.Figure:
    """Parallel coordinates of every scored trial: one axis per parameter, then the folds done (a
    partial mean ends below k) and the CV mean; a plain trial sits at `n/a (plain)` on the
    axis of a phase-1-only parameter."""
    folds, metric = sweep.search.cv_folds, sweep.search.metric
    shown = [t for t in trials if scored(t)]
    dimensions = [_dimension(name, param, sweep, shown) for name, param in sweep.params.items()]
    dimensions.append(
        {
            "label": "folds done",
            "values": [t.folds_done for t in shown],
            "range": [0.8, folds + 0.2],
            "tickvals": list(range(1, folds + 1)),
        }
    )
    scores = [t.cv_mean for t in shown]
    dimensions.append({"label": f"CV {metric}", "values": scores, "range": fitted(scores)})
    low, high = fitted(scores) or (0, 1)
    line = {"color": scores, "colorscale": "Viridis", "cmin": low, "cmax": high}
    line.update(showscale=True, reversescale=sweep.search.mode == "min", colorbar={"title": metric})
    figure = go.Figure(go.Parcoords(line=line, dimensions=dimensions))
    stopped = sum(partial(t, folds) for t in shown)
    note = f" ({stopped} partial: fewer than {folds} folds done)" if stopped else ""
    figure.update_layout(
        title=f"Parallel coordinates of the {len(shown)} scored trials{note}",
        margin={"l": 80, "r": 40, "t": 110},
    )
    return figure


def _dimension(name: str, param: Param, sweep: Sweep, shown: list[Trial]) -> dict[str, Any]:
    """One parcoords axis: values on the plotted scale (log10 for a log parameter, the index of a
    choice), tick labels in the parameter's own values, and `n/a (plain)` below the range for a
    trial where the parameter does nothing (phase 1 skipped) or was not sampled."""
    choices = [str(c) for c in param.choices or []]

    def scale(value: Any) -> float | None:
        if param.type == "categorical":
            return choices.index(str(value)) if str(value) in choices else None
        return math.log10(value) if param.log else float(value)

    if param.type == "categorical":
        ticks, labels = list(range(len(choices))), choices
        low, high = 0, len(choices) - 1
    else:
        low, high = scale(param.low), scale(param.high)
        step = param.step or 1
        if param.type == "int" and not param.log and (high - low) / step <= 12:
            ticks = [low + step * i for i in range(int((high - low) / step) + 1)]
        else:
            ticks = [low + (high - low) * i / 4 for i in range(5)]
        labels = [f"{10**t:.2g}" if param.log else f"{t:.3g}" for t in ticks]
    values = [
        scale(t.params[name])
        if name in t.params and (not phase1_only(name) or sweep.steps_of(t.params) > 0)
        else None
        for t in shown
    ]
    span = (high - low) or 1
    lowest = low - 0.2 * span
    if any(v is None for v in values):
        ticks, labels = [lowest, *ticks], [NOT_APPLICABLE, *labels]
    return {
        "label": name,
        "values": [lowest if v is None else v for v in values],
        "range": [lowest if None in values else low - 0.02 * span, high + 0.02 * span],
        "tickvals": ticks,
        "ticktext": labels,
    }


def folds_plot(sweep: Sweep, trials: list[Trial], numbers: dict[str, int]) -> go.Figure:
    """Each fold's score per trial (coloured by fold) and the trial's mean (a bar; orange when
    partial): the spread behind each CV mean."""
    folds, metric = sweep.search.cv_folds, sweep.search.metric
    shown = sorted((t for t in trials if t.fold_scores), key=lambda t: numbers[t.trial_id])
    figure = go.Figure()
    for fold in range(folds):
        having = [t for t in shown if len(t.fold_scores) > fold]
        figure.add_trace(
            go.Scatter(
                x=[numbers[t.trial_id] for t in having],
                y=[t.fold_scores[fold] for t in having],
                mode="markers",
                marker={"size": 8, "color": FOLD_COLORS[fold % len(FOLD_COLORS)]},
                name=f"fold {fold + 1}",
                text=[
                    f"trial {numbers[t.trial_id]} ({t.trial_id}), fold {fold + 1}" for t in having
                ],
                hovertemplate="%{text}: %{y:.4f}<extra></extra>",
            )
        )
    for name, keep, color in (
        ("mean", lambda t: not partial(t, folds), "#222"),
        ("partial mean", lambda t: partial(t, folds), PARTIAL["color"]),
    ):
        chosen = [t for t in shown if keep(t)]
        figure.add_trace(
            go.Scatter(
                x=[numbers[t.trial_id] for t in chosen],
                y=[t.cv_mean for t in chosen],
                mode="markers",
                marker={"symbol": "line-ew", "size": 24, "line": {"width": 3, "color": color}},
                name=name,
                text=[_hover(t, numbers[t.trial_id], folds) for t in chosen],
                hovertemplate="%{text}<extra></extra>",
            )
        )
    figure.update_layout(
        title=f"{metric} of each fold, per trial (a partial trial has fewer than {folds} folds)",
        xaxis=_trial_axis(len(numbers)),
        yaxis={"title": metric, "range": fitted([s for t in shown for s in t.fold_scores])},
    )
    return figure


def loss_plot(
    history: list[dict[str, Any]], alphas: list[float | None], source: str, plain: bool
) -> go.Figure:
    """Phase 1 (L_lm, α·L_task and their sum, after any LM-head warm-up) and phase 2 (L_task, which
    is its whole loss) side by side, each on its own step axis and loss scale."""
    warmup = [h for h in history if h["phase"] == 0]
    phase1 = [(h, a) for h, a in zip(history, alphas) if h["phase"] == 1]
    offset = len(warmup)
    panels = {
        "phase 1: L_lm + α·L_task": [
            ("L_lm (LM-head warm-up)", [(h["step"], h["lm_loss"]) for h in warmup]),
            ("L_lm", [(offset + h["step"], h["lm_loss"]) for h, _ in phase1]),
            ("α·L_task", [(offset + h["step"], a * h["task_loss"]) for h, a in phase1]),
            ("total (L_lm + α·L_task)", [(offset + h["step"], h["loss"]) for h, _ in phase1]),
        ],
        "phase 2: L_task": [
            ("L_task", [(h["step"], h["task_loss"]) for h in history if h["phase"] == 2])
        ],
    }
    if not phase1:
        del panels["phase 1: L_lm + α·L_task"]
    figure = make_subplots(rows=1, cols=len(panels), subplot_titles=list(panels))
    for col, curves in enumerate(panels.values(), 1):
        for name, points in curves:
            points = [(x, y) for x, y in points if y is not None and math.isfinite(y)]
            if points:
                xs, ys = zip(*points)
                figure.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=name), row=1, col=col)
    if offset and phase1:
        figure.add_vline(x=offset + 0.5, line_dash="dot", row=1, col=1)
    skipped = ""
    if not phase1:
        skipped = "; phase 1 skipped (phase1.steps = 0)" if plain else "; no phase-1 step recorded"
    figure.update_xaxes(title="step")
    figure.update_yaxes(title="loss", col=1)
    figure.update_layout(title=f"Loss curves of the best configuration ({source}{skipped})")
    return figure


def phase1_plot(verdict: dict[str, Any], metric: str, rope: float) -> go.Figure:
    """The phase-1 verdict's evidence: the paired fold differences (best two-phase − best plain
    trial, positive = phase 1 better), their mean with its 95% interval, and the ROPE band."""
    figure = go.Figure()
    gap = verdict.get("difference")
    if not gap or not gap["differences"]:
        figure.add_trace(go.Scatter(x=[], y=[], mode="markers", name="paired fold differences"))
        figure.update_layout(
            title=f"Phase 1: no plain-vs-two-phase comparison ({verdict['statement'][:80]}…)"
        )
        return figure
    differences = gap["differences"]
    folds = list(range(1, len(differences) + 1))
    figure.add_hrect(
        y0=-rope,
        y1=rope,
        fillcolor="#888888",
        opacity=0.18,
        line_width=0,
        annotation_text=f"ROPE ±{rope:g}",
        annotation_position="top left",
    )
    figure.add_hline(y=0, line={"color": "#444444", "width": 1})
    if gap["low"] is not None:
        figure.add_hrect(
            y0=gap["low"],
            y1=gap["high"],
            fillcolor="#1f77b4",
            opacity=0.15,
            line_width=0,
            annotation_text="95% interval",
            annotation_position="bottom right",
        )
    figure.add_hline(
        y=gap["mean"],
        line={"color": "#1f77b4", "dash": "dash"},
        annotation_text=f"mean {gap['mean']:+.4f}",
        annotation_position="top right",
    )
    figure.add_trace(
        go.Scatter(
            x=folds,
            y=differences,
            mode="markers",
            marker=COMPLETE,
            name="paired fold differences",
            hovertemplate="fold %{x}: %{y:+.4f}<extra></extra>",
        )
    )
    two_phase, plain = verdict["best_two_phase"]["trial_id"], verdict["best_plain"]["trial_id"]
    values = [*differences, -rope, rope, gap["mean"]] + [
        v for v in (gap["low"], gap["high"]) if v is not None
    ]
    figure.update_layout(
        title=f"Phase 1 {verdict['outcome']}: {metric} of two-phase trial {two_phase} − plain "
        f"trial {plain}, fold by fold",
        xaxis={"title": "fold", "dtick": 1, "range": [0.5, len(folds) + 0.5]},
        yaxis={"title": f"Δ {metric} (positive: phase 1 better)", "range": fitted(values)},
        showlegend=False,
    )
    return figure
