"""The Per-class F1 and Protocols pages' figures (no Streamlit here): per-class scores with
their intervals, paired differences against a reference, B minus A per (variant, seed)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from pages.fig_base import PALETTE, finish_layout
from pages.figcache import cached_figure

__all__ = ["METRIC_TITLES", "delta_forest", "paired_differences", "per_class_bars"]

METRIC_TITLES = {"precision": "Precision", "recall": "Recall", "f1": "F1"}


@cached_figure
def per_class_bars(
    df: pd.DataFrame,
    classes: Sequence[str],
    metrics: Sequence[str],
    *,
    title: str,
    points: pd.DataFrame | None = None,
) -> go.Figure:
    """Grouped bars with asymmetric error bars, one panel per metric.

    df columns: group, class, metric, value, ci_low, ci_high. points (optional): group, class,
    metric, value, seed - the individual seeds drawn over the bars of aggregated groups.
    """
    groups = list(dict.fromkeys(df["group"]))
    n = max(1, len(groups))
    span = 0.8  # bargap 0.2, no gap inside a group: bar k of n sits at c - 0.4 + (k + 0.5) * w
    width = span / n
    xs = np.arange(len(classes), dtype=float)
    fig = make_subplots(
        rows=1,
        cols=len(metrics),
        shared_yaxes=True,
        subplot_titles=[METRIC_TITLES.get(m, m) for m in metrics],
        horizontal_spacing=0.03,
    )
    for col, metric in enumerate(metrics, start=1):
        for k, g in enumerate(groups):
            sub = df[(df["group"] == g) & (df["metric"] == metric)].set_index("class")
            sub = sub.reindex(classes)
            x = xs - span / 2 + (k + 0.5) * width
            fig.add_trace(
                go.Bar(
                    name=g,
                    legendgroup=g,
                    showlegend=col == 1,
                    x=x,
                    y=sub["value"],
                    width=width,
                    marker_color=PALETTE[k % len(PALETTE)],
                    error_y={
                        "type": "data",
                        "symmetric": False,
                        "array": (sub["ci_high"] - sub["value"]).clip(lower=0),
                        "arrayminus": (sub["value"] - sub["ci_low"]).clip(lower=0),
                        "thickness": 1.2,
                        "width": 3,
                    },
                    customdata=np.stack(
                        [np.array(classes, dtype=object), sub["ci_low"], sub["ci_high"]], axis=-1
                    ),
                    hovertemplate=f"<b>{g}</b><br>%{{customdata[0]}}<br>{metric} %{{y:.3f}}"
                    "<br>95% CI [%{customdata[1]:.3f}, %{customdata[2]:.3f}]<extra></extra>",
                ),
                row=1,
                col=col,
            )
            pts = None if points is None else _seed_points(points, g, metric, dict(zip(classes, x)))
            if pts is not None:
                fig.add_trace(pts, row=1, col=col)
    fig.update_xaxes(tickvals=xs, ticktext=list(classes), range=[-0.5, len(classes) - 0.5])
    fig.update_layout(barmode="overlay", legend={"title": {"text": ""}})
    fig.update_yaxes(range=[0, 1.05], row=1, col=1, title_text="score")
    return finish_layout(fig, title, 430)


@cached_figure
def delta_forest(deltas: pd.DataFrame, metric: str, *, title: str) -> go.Figure:
    """Paired differences against the reference with their intervals, one row per class."""
    sub = deltas[deltas["metric"] == metric]
    fig = go.Figure()
    for k, run in enumerate(dict.fromkeys(sub["run"])):
        r = sub[sub["run"] == run]
        fig.add_trace(
            go.Scatter(
                x=r["delta"],
                y=r["class"],
                mode="markers",
                orientation="h",
                offsetgroup=str(k),
                name=run,
                marker={"size": 9, "color": PALETTE[k % len(PALETTE)]},
                error_x={
                    "type": "data",
                    "symmetric": False,
                    "array": r["ci_high"] - r["delta"],
                    "arrayminus": r["delta"] - r["ci_low"],
                },
                customdata=np.stack([r["ci_low"], r["ci_high"]], axis=-1),
                hovertemplate=f"<b>{run}</b><br>%{{y}}: Δ %{{x:+.3f}}"
                "<br>95% CI [%{customdata[0]:+.3f}, %{customdata[1]:+.3f}]<extra></extra>",
            )
        )
    fig.add_vline(x=0, line={"color": "grey", "dash": "dash"})
    fig.update_layout(scattermode="group")
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(title_text=f"Δ {METRIC_TITLES.get(metric, metric)} vs reference")
    return finish_layout(fig, title, 160 + 45 * max(1, sub["class"].nunique()))


@cached_figure
def paired_differences(result: dict, keys: Sequence[str]) -> go.Figure:
    """B - A per (variant, seed) pair as dots, with the mean and its t interval, per metric."""
    summary = result["summary"]
    labels = [summary[k]["label"] for k in keys]
    fig = go.Figure()
    for k, pair in enumerate(result["pairs"]):
        name = f"{pair['variant']} s{pair['seed']}"
        fig.add_trace(
            go.Scatter(
                x=[pair[key]["diff"] for key in keys],
                y=labels,
                mode="markers",
                name=name,
                marker={"size": 8, "color": PALETTE[k % len(PALETTE)], "opacity": 0.75},
                customdata=[[pair[key]["a"], pair[key]["b"]] for key in keys],
                hovertemplate=f"<b>{name}</b><br>%{{y}}: %{{customdata[0]:.3f}} -> "
                "%{customdata[1]:.3f} (Δ %{x:+.3f})<extra></extra>",
            )
        )
    means = [summary[key]["mean_diff"] for key in keys]
    lo = [summary[key]["ci"][0] for key in keys]
    hi = [summary[key]["ci"][1] for key in keys]
    fig.add_trace(
        go.Scatter(
            x=means,
            y=labels,
            mode="markers",
            name="mean, 95% t interval",
            marker={"size": 14, "symbol": "diamond", "color": "black"},
            error_x={
                "type": "data",
                "symmetric": False,
                "array": [h - m for h, m in zip(hi, means, strict=True)],
                "arrayminus": [m - v for m, v in zip(means, lo, strict=True)],
            },
            hovertemplate="%{y}: mean Δ %{x:+.3f}<extra></extra>",
        )
    )
    fig.add_vline(x=0, line={"color": "grey", "dash": "dash"})
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(title_text="B - A (same variant and seed)")
    return finish_layout(fig, "Paired differences, B minus A", 160 + 50 * len(keys))


def _seed_points(
    points: pd.DataFrame, group: str, metric: str, pos: dict[str, float]
) -> go.Scatter | None:
    """The single seeds of ``group`` for ``metric`` as open circles over its bars (``pos``:
    class -> the bar's x), or None where it has none (``points``: see :func:`per_class_bars`)."""
    if points.empty:
        return None
    pts = points[(points["group"] == group) & (points["metric"] == metric)]
    if pts.empty:
        return None
    return go.Scatter(
        x=[pos[c] for c in pts["class"]],
        y=pts["value"],
        mode="markers",
        name=f"{group}: single seeds",
        legendgroup=group,
        showlegend=False,
        marker={"color": "black", "size": 6, "symbol": "circle-open"},
        customdata=np.stack([pts["class"], pts["seed"].astype(str)], axis=-1),
        hovertemplate=f"{group}<br>seed %{{customdata[1]}}, %{{customdata[0]}}: "
        "%{y:.3f}<extra></extra>",
    )
