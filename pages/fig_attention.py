"""The Attention page's figures (no Streamlit here): mean attention per class and channel,
overlap between branches, angles between class means."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from pages.fig_base import DIFF_SCALE, HALF_WIDTH, SEQ_SCALE, finish_layout, matrix_heatmap
from pages.figcache import cached_figure

__all__ = ["angle_heatmap", "attention_heatmaps", "overlap_heatmap"]


@cached_figure
def attention_heatmaps(
    mean: np.ndarray,
    classes: Sequence[str],
    channels: np.ndarray,
    *,
    title: str,
    branch_names: Sequence[str] | None = None,
    deviation: bool = False,
) -> go.Figure:
    """One panel per branch: rows classes, columns channels, values mean attention.

    deviation: show each class's attention minus the branch's mean over classes (diverging
    scale centred on 0), which isolates what is class-specific. Otherwise the colour range is
    the min..max of the values shown (stated on the colour bar).
    """
    k = mean.shape[1]
    names = list(branch_names) if branch_names else [f"branch {b + 1}" for b in range(k)]
    z_all = mean[:, :, channels]
    if deviation:
        z_all = z_all - np.nanmean(z_all, axis=0, keepdims=True)
        lim = float(np.nanmax(np.abs(z_all))) if np.isfinite(z_all).any() else 1.0
        zmin, zmax, scale, bar = -max(lim, 1e-9), max(lim, 1e-9), DIFF_SCALE, "vs class mean"
    else:
        finite = z_all[np.isfinite(z_all)]
        zmin = float(finite.min()) if finite.size else 0.0
        zmax = float(finite.max()) if finite.size else 1.0
        zmax = max(zmax, zmin + 1e-9)
        scale, bar = "Viridis", "attention"
    fig = make_subplots(
        rows=k,
        cols=1,
        shared_xaxes=True,
        subplot_titles=names,
        vertical_spacing=min(0.06, 0.3 / max(k, 1)),
    )
    for b in range(k):
        fig.add_trace(
            go.Heatmap(
                z=z_all[:, b, :],
                x=[str(c) for c in channels],
                y=list(classes),
                zmin=zmin,
                zmax=zmax,
                colorscale=scale,
                showscale=b == 0,
                colorbar={"title": {"text": bar}, "thickness": 12},
                hovertemplate=f"{names[b]}<br>class %{{y}}<br>channel %{{x}}"
                + ("<br>Δ attention %{z:+.4f}" if deviation else "<br>attention %{z:.4f}")
                + "<extra></extra>",
            ),
            row=b + 1,
            col=1,
        )
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(type="category", showticklabels=False, tickangle=-90)
    fig.update_xaxes(title_text="channel", showticklabels=len(channels) <= 96, row=k, col=1)
    return finish_layout(fig, title, 120 + k * (60 + 28 * len(classes)))


@cached_figure
def overlap_heatmap(
    m: np.ndarray, *, title: str, what: str, branch_names: Sequence[str] | None = None
) -> go.Figure:
    """Overlap (0..1, ``what``: 'Jaccard', 'cosine') between branches' attention, (B, B)."""
    names = list(branch_names) if branch_names else [f"branch {b + 1}" for b in range(len(m))]
    return matrix_heatmap(
        m,
        names,
        names,
        title=title,
        zmin=0,
        zmax=1,
        colorscale=SEQ_SCALE,
        colorbar=what,
        hover="%{y} / %{x}<br>" + what + " %{z:.3f}",
        width=HALF_WIDTH,
    )


@cached_figure
def angle_heatmap(m: np.ndarray, classes: Sequence[str], *, title: str, zmax: float) -> go.Figure:
    """Angles (degrees, 0..zmax) between class means, (C, C): square cells, the figure as tall
    as a HEATMAP_WIDTH column makes them (the Attention page shows 3 per row)."""
    return matrix_heatmap(
        m,
        classes,
        classes,
        title=title,
        zmin=0,
        zmax=zmax,
        colorscale="Viridis",
        colorbar="degrees",
        digits=1,
        hover="%{y} / %{x}<br>angle %{z:.1f}°",
        square=True,
    )
