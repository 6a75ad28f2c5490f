"""The Gradient conflict page's figures (no Streamlit here): class-pair cosine matrices, the
difference of two runs, conflict over training, branch shares, conflict change against gain."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from pages.fig_base import (
    CONFLICT_SCALE,
    DIFF_WIDTH,
    PALETTE,
    SEQ_SCALE,
    add_grid_heatmap,
    finish_grid,
    finish_layout,
    heatmap_grid,
    matrix_heatmap,
    number,
)
from pages.figcache import cached_figure

__all__ = [
    "conflict_difference",
    "conflict_gain_scatter",
    "conflict_grid",
    "conflict_heatmap",
    "conflict_history_figure",
    "shares_heatmap",
]


@cached_figure
def conflict_heatmap(
    m: np.ndarray, classes: Sequence[str], *, title: str, click_tag: int | None = None
) -> go.Figure:
    """Cosines between class gradients (C, C) on -1..1: red = conflict, blue = agreement;
    ``click_tag``: a click selects a cell (pages.fig_base.clickable_cells)."""
    return matrix_heatmap(
        m,
        classes,
        classes,
        title=title,
        zmin=-1,
        zmax=1,
        colorscale=CONFLICT_SCALE,
        colorbar="cos",
        hover="%{y} / %{x}<br>cos %{z:+.3f}",
        click_tag=click_tag,
    )


@cached_figure
def conflict_grid(
    mats: Mapping[str, np.ndarray], classes: Sequence[str], titles: Sequence[str], cols: int = 3
) -> go.Figure:
    """Every run's conflict matrix in one figure (name -> cosines (C, C), one ``titles`` entry
    each), ``cols`` per row, one -1..1 scale: one chart for the browser to draw instead of one
    per run (as the confusion grid). A click on any run's cell selects it (tag: the run's
    place; pages.fig_base.clickable_cells)."""
    fig, geo = heatmap_grid(titles, classes, cols, chars=5)  # "-0.28"
    for k, name in enumerate(mats):
        m = np.asarray(mats[name], float)
        text = [["" if not np.isfinite(v) else f"{v:.2f}" for v in row] for row in m]
        hover = f"<b>{name}</b><br>%{{y}} / %{{x}}<br>cos %{{z:+.3f}}<extra></extra>"
        add_grid_heatmap(fig, geo, k, cols, m, classes, text=text, hover=hover)
    bar = {"title": {"text": "cos"}, "thickness": 12}
    return finish_grid(
        fig, geo, {"colorscale": CONFLICT_SCALE, "cmin": -1, "cmax": 1, "colorbar": bar}
    )


@cached_figure
def conflict_difference(
    a: np.ndarray,
    b: np.ndarray,
    classes: Sequence[str],
    names: tuple[str, str],
    title: str,
    click_tag: int | None = None,
) -> go.Figure:
    """Run a's cosines (C, C) minus run b's (-2..2, the diagonal blank); both in the hover."""
    d = np.asarray(a, float) - np.asarray(b, float)
    np.fill_diagonal(d, np.nan)
    return matrix_heatmap(
        d,
        classes,
        classes,
        title=title,
        zmin=-2,
        zmax=2,
        colorscale=CONFLICT_SCALE,
        colorbar="Δ cos",
        customdata=np.dstack([a, b]),
        hover=f"%{{y}} / %{{x}}<br>{names[0]}: %{{customdata[0]:+.3f}}"
        f"<br>{names[1]}: %{{customdata[1]:+.3f}}<br>difference %{{z:+.3f}}",
        width=DIFF_WIDTH,
        click_tag=click_tag,
    )


@cached_figure
def conflict_history_figure(histories: Mapping[str, Sequence[Mapping[str, Any]]]) -> go.Figure:
    """Mean off-diagonal cosine per epoch (band: ± one std over class pairs), one line per run."""
    fig = go.Figure()
    for k, (name, hist) in enumerate(histories.items()):
        ep = [h.get("epoch") for h in hist]
        mean = np.array([number(h.get("mean")) for h in hist])
        std = np.array([number(h.get("std")) for h in hist])
        colour = PALETTE[k % len(PALETTE)]
        if np.isfinite(std).any():
            fig.add_trace(
                go.Scatter(
                    x=ep + ep[::-1],
                    y=np.concatenate([mean + std, (mean - std)[::-1]]),
                    fill="toself",
                    mode="lines",  # unset: markers on a trace of < 20 points (the band: 2 an epoch)
                    line={"width": 0},
                    fillcolor=colour.replace("rgb(", "rgba(").replace(")", ",0.12)"),
                    hoverinfo="skip",
                    showlegend=False,
                    legendgroup=name,
                )
            )
        fig.add_trace(
            go.Scatter(
                x=ep,
                y=mean,
                mode="lines+markers",
                name=name,
                legendgroup=name,
                line={"color": colour},
                hovertemplate=f"{name}<br>epoch %{{x}}: mean cos %{{y:+.3f}}<extra></extra>",
            )
        )
    fig.add_hline(y=0, line={"color": "grey", "dash": "dot"})
    fig.update_xaxes(
        title_text="epoch",
        dtick=1
        if len(histories) and max((len(h) for h in histories.values()), default=0) <= 20
        else None,
    )
    fig.update_yaxes(title_text="mean off-diagonal cos", zeroline=False)
    title = "Mean gradient conflict over training (band: ± std over class pairs)"
    return finish_layout(fig, title, 380)


@cached_figure
def shares_heatmap(
    shares: np.ndarray, classes: Sequence[str], branch_names: Sequence[str], *, title: str
) -> go.Figure:
    """The share (0..1) of each class's gradient norm on each branch's parameters, (C, B): rows
    classes, each summing to 1."""
    return matrix_heatmap(
        shares,
        branch_names,
        classes,
        title=title,
        zmin=0,
        zmax=1,
        colorscale=SEQ_SCALE,
        colorbar="share",
        hover="class %{y}<br>%{x}: share %{z:.3f}",
        xlabel="branch",
        ylabel="class",
    )


@cached_figure
def conflict_gain_scatter(methods: Sequence[Mapping[str, Any]], title: str) -> go.Figure:
    """Each method's seed-mean change against the baseline: minority-class gradient cosine
    (x, higher = less conflict) against minority-class F1 (y); zero lines dashed."""
    df = pd.DataFrame(methods)
    fig = px.scatter(
        df,
        x="d_cos_minority",
        y="d_f1_minority",
        text="method",
        hover_data={"seeds": True, "d_conflict": ":+.3f", "d_macro_f1": ":+.3f"},
        labels={
            "d_cos_minority": "change in minority-class mean cosine (higher: less conflict)",
            "d_f1_minority": "change in minority-class F1",
        },
        title=title,
    )
    fig.update_traces(textposition="top center")
    fig.add_hline(y=0, line_dash="dash", line_color="grey")
    fig.add_vline(x=0, line_dash="dash", line_color="grey")
    return fig
