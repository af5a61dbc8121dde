"""Plotly figures, built by plain functions that tests can call."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

STATUS_COLOURS = {
    "queued": "#9aa4b2",
    "running": "#7c9cff",
    "succeeded": "#3fb950",
    "failed": "#f85149",
    "cancelled": "#d29922",
    "paused": "#a371f7",
    "stopped": "#9aa4b2",
}


SERIES_COLOURS = ["#7c9cff", "#f0883e", "#3fb950", "#a371f7", "#d29922"]
"""The lines of one panel, in order (train, then eval, then others)."""

MAX_POINTS = 500
"""A line shows at most this many points (a long run's curve is thinned for display)."""


def thin(points: list[tuple[int, float]], limit: int = MAX_POINTS) -> list[tuple[int, float]]:
    """At most `limit` (+1) evenly spaced points of a series, its first and last kept:
    what a chart a few hundred pixels wide can show, at a fraction of the bytes."""
    if len(points) <= limit:
        return points
    stride = -(-len(points) // limit)
    out = points[::stride]
    return out if out[-1] == points[-1] else out + [points[-1]]


def metrics_figure(series: dict[str, list[tuple[int, float]]]) -> go.Figure:
    """One line per metric against the step (go.Scatter: cheap to rebuild every second)."""
    fig = go.Figure()
    for name, points in sorted(series.items()):
        points = thin(points)
        fig.add_trace(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], mode="lines+markers", name=name))
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=30, b=10), xaxis_title="step", legend_title="metric")
    return fig


def jobs_by_status_figure(counts: dict[str, int]) -> go.Figure:
    """Jobs per status as a horizontal bar, coloured like the status icons."""
    statuses = [s for s in STATUS_COLOURS if counts.get(s)]
    fig = go.Figure(
        go.Bar(
            x=[counts[s] for s in statuses],
            y=statuses,
            orientation="h",
            marker_color=[STATUS_COLOURS[s] for s in statuses],
        )
    )
    fig.update_layout(height=200, margin=dict(l=10, r=10, t=10, b=10), xaxis_title="jobs")
    return fig


def token_length_histogram(lengths: list[int], max_length: int | None = None) -> go.Figure:
    """Tokens per example; a dashed line at the training max length, if given."""
    fig = go.Figure(go.Histogram(x=lengths, nbinsx=40, marker_color="#7c9cff"))
    if max_length:
        fig.add_vline(x=max_length, line_dash="dash", line_color="#f85149", annotation_text="max length")
    fig.update_layout(height=260, margin=dict(l=10, r=10, t=30, b=10), xaxis_title="tokens per example", yaxis_title="examples")
    return fig


def live_chart(series: dict[str, list[tuple[int, float]]], panel: tuple[str, tuple[str, ...]],
               resumed_at: list[int] | None = None) -> tuple[Any, dict]:
    """(data, Vega-Lite spec) of a run's live chart, one panel of its kind's
    `panels` (the loss; the reward for PPO and GRPO): its metrics against the
    step, dotted rules where the run was resumed. Vega-Lite, not Plotly, because a
    keyed Vega-Lite chart keeps its identity when points are added and the browser
    only inserts them; a changed Plotly chart is drawn again from scratch (about a
    quarter of a core-second in headless Chromium here, for every new point)."""
    import pandas as pd

    title, names = panel
    rows = [{"step": s, "value": v, "metric": name} for name in names for s, v in thin(series.get(name) or [])]
    data = pd.DataFrame(rows, columns=["step", "value", "metric"])
    line = {
        "mark": {"type": "line", "point": {"size": 20}, "tooltip": True},
        "encoding": {
            "x": {"field": "step", "type": "quantitative", "title": "step"},
            "y": {"field": "value", "type": "quantitative", "title": title.lower(), "scale": {"zero": False}},
            "color": {"field": "metric", "type": "nominal", "title": None,
                      "scale": {"domain": list(names), "range": [SERIES_COLOURS[j % len(SERIES_COLOURS)] for j in range(len(names))]}},
        },
    }
    spec: dict = {"height": 260, "title": title, "layer": [line]}
    if resumed_at:
        spec["layer"].append({
            "data": {"values": [{"step": s} for s in resumed_at]},
            "mark": {"type": "rule", "strokeDash": [2, 3], "color": "#9aa4b2"},
            "encoding": {"x": {"field": "step", "type": "quantitative"}},
        })
    return data, spec


def training_figure(series: dict[str, list[tuple[int, float]]], panels: list[tuple[str, tuple[str, ...]]],
                    resumed_at: list[int] | None = None) -> go.Figure:
    """The training dashboard: one small panel per (title, metric names) of the
    kind's `panels`, against the step; dotted lines where the run was paused and resumed."""
    from plotly.subplots import make_subplots

    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[title for title, _ in panels], horizontal_spacing=0.07,
                        vertical_spacing=0.16 if rows > 1 else 0.0)
    for i, (_, names) in enumerate(panels):
        row, col = i // cols + 1, i % cols + 1
        for j, name in enumerate(names):
            points = thin(series.get(name) or [])
            if not points:
                continue
            fig.add_trace(
                go.Scatter(
                    x=[p[0] for p in points],
                    y=[p[1] for p in points],
                    mode="lines+markers" if len(points) < 30 or name.startswith("eval") else "lines",
                    name=name,
                    line=dict(color=SERIES_COLOURS[j % len(SERIES_COLOURS)], width=1.5),
                    marker=dict(size=4),
                    showlegend=len(names) > 1,  # one metric: the panel's title names it
                ),
                row=row,
                col=col,
            )
        for step in resumed_at or []:
            fig.add_vline(x=step, line_dash="dot", line_color="#9aa4b2", row=row, col=col)
    fig.update_layout(height=270 * rows, margin=dict(l=10, r=10, t=60, b=10), legend=dict(orientation="h", y=1.14 if rows > 1 else 1.3, x=0))
    return fig


# --- evaluation ---------------------------------------------------------------------------


def metric_by_model_figure(rows: list[dict], metric: str) -> go.Figure:
    """Grouped bars: one group per model, one bar per data set (or task), the
    newest evaluation of each pair."""
    latest: dict[tuple[str, str], float] = {}
    for row in sorted(rows, key=lambda r: r["job"]):
        if isinstance(row.get(metric), (int, float)):
            latest[(row["model"], row["dataset"])] = row[metric]
    model_names = sorted({m for m, _ in latest})
    fig = go.Figure()
    for dataset in sorted({d for _, d in latest}):
        fig.add_trace(
            go.Bar(
                x=model_names,
                y=[latest.get((m, dataset)) for m in model_names],
                name=dataset,
                text=[f"{latest[(m, dataset)]:.3g}" if (m, dataset) in latest else "" for m in model_names],
                textposition="outside",
            )
        )
    fig.update_layout(
        barmode="group", height=360, margin=dict(l=10, r=10, t=30, b=10), showlegend=True,
        yaxis_title=metric, legend_title="data set / task", xaxis_title="model",
    )
    return fig


def metric_over_steps_figure(points: list[dict], metrics: list[str]) -> go.Figure:
    """Metrics of one run's checkpoints against the training step."""
    fig = go.Figure()
    for name in metrics:
        pts = [(p["step"], p["metrics"].get(name)) for p in points if isinstance(p["metrics"].get(name), (int, float))]
        fig.add_trace(go.Scatter(x=[s for s, _ in pts], y=[v for _, v in pts], mode="lines+markers", name=name))
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=30, b=10), xaxis_title="training step", legend_title="metric")
    return fig


def runs_overlay_figure(series_by_run: dict[str, list[tuple[int, float]]], metric: str) -> go.Figure:
    """One training metric of several runs on one chart."""
    fig = go.Figure()
    for label, points in series_by_run.items():
        points = thin(points)
        fig.add_trace(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], mode="lines", name=label))
    fig.update_layout(height=340, margin=dict(l=10, r=10, t=30, b=10), xaxis_title="step", yaxis_title=metric, legend_title="run")
    return fig


def export_figure(checks: dict[str, dict[str, Any]]) -> go.Figure:
    """An export's graphs side by side: size on disk, decode tokens/s beside
    PyTorch's, and agreement with PyTorch's next token, each bar green when the
    graph is within its tolerance and red when it is not."""
    from plotly.subplots import make_subplots

    names = list(checks)
    colours = [STATUS_COLOURS["succeeded"] if checks[p].get("ok") else STATUS_COLOURS["failed"] for p in names]
    fig = make_subplots(rows=1, cols=3, subplot_titles=("size (MB)", "decode tokens/s", "argmax agreement"))
    fig.add_trace(go.Bar(x=names, y=[checks[p].get("bytes", 0) / 1e6 for p in names], marker_color=colours, showlegend=False), 1, 1)
    torch_rate = max((c.get("torch_tokens_per_s") or 0 for c in checks.values()), default=0)
    fig.add_trace(go.Bar(x=["PyTorch", *names], y=[torch_rate, *(checks[p].get("onnx_tokens_per_s") for p in names)],
                         marker_color=[STATUS_COLOURS["queued"], *colours], showlegend=False), 1, 2)
    fig.add_trace(go.Bar(x=names, y=[checks[p].get("argmax_agreement") for p in names], marker_color=colours, showlegend=False,
                         text=[f"{checks[p].get('argmax_agreement', 0):.1%}" for p in names], textposition="inside"), 1, 3)
    fig.update_yaxes(range=[0, 1], tickformat=".0%", row=1, col=3)
    fig.update_layout(height=260, margin=dict(l=10, r=10, t=30, b=10))
    return fig
