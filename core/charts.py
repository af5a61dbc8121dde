"""Plotly figures, built by plain functions that tests can call."""

from __future__ import annotations

import plotly.graph_objects as go

STATUS_COLOURS = {
    "queued": "#9aa4b2",
    "running": "#7c9cff",
    "succeeded": "#3fb950",
    "failed": "#f85149",
    "cancelled": "#d29922",
}


def metrics_figure(series: dict[str, list[tuple[int, float]]]) -> go.Figure:
    """One line per metric against the step (go.Scatter: cheap to rebuild every second)."""
    fig = go.Figure()
    for name, points in sorted(series.items()):
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
