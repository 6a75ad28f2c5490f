"""The Attributions page's figure: every run's numbers for one image, twice (no Streamlit here).

:func:`attribution_grid` (plotly: the page's interactive view and the HTML download) and
:func:`attribution_grid_static` (matplotlib: the picture the page shows by default, see
:func:`attribution_grid_png`) draw the same rows and columns from one preparation,
:func:`attribution_grid_parts`.

A run is ``(label, report, target)``: its label, a csba.attributions report (``classes``,
``probs`` (C,), ``branch_logits`` (B, C) per branch or (C, 1) per class head, ``branch_labels``,
``attention`` (B, channels) gates or None) and the index of the class explained.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from pages.fig_base import clip_label, png
from pages.figcache import cached_figure

__all__ = [
    "GridColumn",
    "GridParts",
    "attribution_grid",
    "attribution_grid_parts",
    "attribution_grid_png",
    "attribution_grid_static",
]

Runs = Sequence[tuple[str, Mapping[str, Any], int]]  # (label, report, explained class index)
EXPLAINED, OTHER = "#d62728", "#1f77b4"  # bar colours: the explained class red, the others blue


@dataclass(frozen=True)
class GridColumn:
    """One run's column of the attribution grid, as both renderers draw it."""

    label: str  # the run's label, the column's title
    probs: np.ndarray  # (C,) class probabilities
    prob_text: list[str]  # (C,) the probabilities as printed ('0.70')
    colours: list[str]  # (C,) bar colours: EXPLAINED for the explained class, else OTHER
    logits: np.ndarray  # (C, B) each branch's logit per class, or (C, 1) each head's own logit
    logit_text: list[list[str]]  # logits as printed ('-2.0'), same shape
    logit_cols: list[str]  # the logit columns' names: '1'..'B', or ['own'] for class heads
    kind: str  # 'branch' or 'head'
    attention: np.ndarray | None  # (B, channels) gates in 0..1, None for a run without gates
    gate_names: list[str]  # (B,) the gate rows' full names ('branch 1', 'head a'): hover
    gate_ticks: list[str]  # (B,) their tick labels, 6 characters at most ('1', 'a')

    @property
    def logit_title(self) -> str:
        """The logit columns' axis title: 'branches' or 'heads'."""
        return f"{self.kind}es" if self.kind == "branch" else "heads"


@dataclass(frozen=True)
class GridParts:
    """What both attribution grids draw: the classes, one column per run, and the scales."""

    classes: list[str]  # (C,) rows of the probability and logit plots
    columns: list[GridColumn]  # in run order
    top: float  # the largest |logit| of all runs (one symmetric logit scale), 1.0 if all 0
    branches: int  # the most gated branches of any run (0: no run has gates, no gate row)


def attribution_grid_parts(runs: Runs) -> GridParts:
    """The numbers and labels of :func:`attribution_grid` and :func:`attribution_grid_static`:
    per run its probabilities and bar colours, its logits (rows = classes, columns = branches,
    or one column for class heads) and gates, each with the text printed for it."""
    classes = [str(c) for c in runs[0][1]["classes"]]
    columns = []
    for label, r, target in runs:
        probs = np.asarray(r["probs"], float)
        z = np.asarray(r["branch_logits"], float)
        if z.shape[1] == len(classes):  # branches: their logits for every class
            z, cols, kind = z.T, [str(k + 1) for k in range(z.shape[0])], "branch"
        else:  # one head per class, each giving its own class's logit
            cols, kind = ["own"], "head"
        gated = r["attention"] is not None
        names = [str(x) for x in r["branch_labels"]] if gated else []
        columns.append(
            GridColumn(
                label=label,
                probs=probs,
                prob_text=[f"{p:.2f}" for p in probs],
                colours=[EXPLAINED if i == target else OTHER for i in range(len(classes))],
                logits=z,
                logit_text=[[f"{v:.1f}" for v in row] for row in z],
                logit_cols=cols,
                kind=kind,
                attention=np.asarray(r["attention"], float) if gated else None,
                gate_names=names,
                gate_ticks=[
                    clip_label(x.removeprefix("branch ").removeprefix("head ")) for x in names
                ],
            )
        )
    top = max(float(np.abs(c.logits).max()) for c in columns) or 1.0
    branches = max((c.attention.shape[0] for c in columns if c.attention is not None), default=0)
    return GridParts(classes, columns, top, branches)


# --------------------------------------------------------------------------------------------
# plotly
# --------------------------------------------------------------------------------------------


@cached_figure
def attribution_grid(runs: Runs) -> go.Figure:
    """Every run's numbers for one image in one figure: one column per run (label, a
    csba.attributions report, the explained class), rows: probabilities (the explained class
    red), the logits each branch (or class head) adds, one row per class as in the bars, and,
    where any run has gates, its attention per branch and channel. One colour scale per row,
    shared by the runs so they compare. One chart for all runs: the browser lays out and draws a
    chart's frame once (five charts, one per run, were 40% of the page's drawing)."""
    parts = attribution_grid_parts(runs)
    n, nc = len(parts.columns), len(parts.classes)
    plots = [26 * nc, 26 * nc] + ([max(60, 22 * parts.branches)] if parts.branches else [])  # px
    gap = 60  # px between rows: tick labels and the next row
    height = sum(plots) + gap * (len(plots) - 1) + 70
    fig = make_subplots(
        rows=len(plots),
        cols=n,
        row_heights=plots,
        column_titles=[c.label.replace(" (", "<br>(", 1) for c in parts.columns],  # 2 lines
        horizontal_spacing=min(0.04, 0.3 / max(1, n - 1)) if n > 1 else 0.0,
        vertical_spacing=gap / height,
    )
    for k, column in enumerate(parts.columns, start=1):
        _grid_column(fig, parts, column, k)
    _grid_scales(fig, parts, height)
    fig.update_yaxes(title_text="probability", row=1, col=1)
    fig.update_yaxes(title_text="logits", row=2, col=1)
    return fig


def _grid_column(fig: go.Figure, parts: GridParts, c: GridColumn, k: int) -> None:
    """Run ``c``'s bars, logits and gates into column ``k`` (from 1) of the plotly grid."""
    n, classes = len(parts.columns), parts.classes
    fig.add_trace(
        go.Bar(
            x=c.probs,
            y=classes,
            orientation="h",
            marker_color=c.colours,
            text=c.prob_text,
            textposition="auto",
            hovertemplate=f"<b>{c.label}</b><br>%{{y}}: %{{x:.3f}}<extra></extra>",
            showlegend=False,
        ),
        row=1,
        col=k,
    )
    fig.add_trace(
        go.Heatmap(
            z=c.logits,
            x=c.logit_cols,
            y=classes,
            coloraxis="coloraxis",
            text=c.logit_text,
            texttemplate="%{text}",
            hovertemplate=f"<b>{c.label}</b><br>%{{y}}, {c.kind} %{{x}}: %{{z:.3f}}<extra></extra>",
        ),
        row=2,
        col=k,
    )
    fig.update_xaxes(type="category", title_text=c.logit_title, row=2, col=k)
    if c.attention is not None:
        fig.add_trace(
            go.Heatmap(
                z=c.attention,
                y=c.gate_ticks,
                coloraxis="coloraxis2",
                customdata=np.broadcast_to(
                    np.array(c.gate_names, dtype=object)[:, None], c.attention.shape
                ),
                hovertemplate=f"<b>{c.label}</b><br>%{{customdata}}, channel %{{x}}: "
                "%{z:.3f}<extra></extra>",
            ),
            row=3,
            col=k,
        )
        fig.update_xaxes(showticklabels=False, title_text="channel", row=3, col=k)
    elif parts.branches:  # a run without gates: its attention cell says so
        fig.update_xaxes(visible=False, row=3, col=k)
        fig.update_yaxes(visible=False, row=3, col=k)
        cell = 2 * n + k  # this cell's axes, in the third row (hidden, so paper coordinates)
        fig.add_annotation(
            text="no gates",
            showarrow=False,
            x=sum(fig.layout[f"xaxis{cell}"].domain) / 2,
            y=sum(fig.layout[f"yaxis{cell}"].domain) / 2,
            xref="paper",
            yref="paper",
        )
    for row in (1, 2):  # class names once per row, on the left
        fig.update_yaxes(
            autorange="reversed", type="category", showticklabels=k == 1, row=row, col=k
        )
    fig.update_yaxes(autorange="reversed", type="category", row=3, col=k)
    fig.update_xaxes(range=[0, 1], tickvals=[0, 0.5, 1], row=1, col=k)


def _grid_scales(fig: go.Figure, parts: GridParts, height: int) -> None:
    """The plotly grid's colour scales (logits symmetric about 0, gates 0..1), each with its
    colour bar beside its own row, and its height (px) and margins."""
    n = len(parts.columns)

    def bar(row: int, title: str) -> dict:  # a colour bar beside its own row only
        lo, hi = fig.layout[f"yaxis{(row - 1) * n + 1}"].domain
        return {"title": {"text": title}, "thickness": 10, "y": (lo + hi) / 2, "len": hi - lo}

    fig.update_layout(
        coloraxis={
            "colorscale": "RdBu",
            "reversescale": True,
            "cmin": -parts.top,
            "cmax": parts.top,
            "colorbar": bar(2, "logit"),
        },
        height=height,
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
    )
    if parts.branches:
        fig.update_layout(
            coloraxis2={"colorscale": "Viridis", "cmin": 0, "cmax": 1, "colorbar": bar(3, "gate")}
        )


# --------------------------------------------------------------------------------------------
# matplotlib
# --------------------------------------------------------------------------------------------


@cached_figure
def attribution_grid_png(runs: Runs, dpi: int = 100) -> bytes:
    """:func:`attribution_grid` drawn once on the server as a PNG (matplotlib, see
    :func:`attribution_grid_static`). The browser decodes one image instead of laying out a
    15-subplot plotly chart (about 40% of the Attributions page's browser time,
    benchmarks/bench_dashboard.py), so it is the page's default."""
    return png(attribution_grid_static(runs, dpi))


def attribution_grid_static(runs: Runs, dpi: int = 100):
    """:func:`attribution_grid` as a matplotlib Figure: the same rows and columns, each value
    printed in its cell, one logit colour scale for all runs (symmetric, the largest |logit|),
    gates on 0..1; no hover."""
    from matplotlib.figure import Figure  # no pyplot: no global state, safe in any thread

    parts = attribution_grid_parts(runs)
    n, nc = len(parts.columns), len(parts.classes)
    gated = parts.branches > 0
    rows = [0.3 * nc + 0.2, 0.3 * nc + 0.2]  # inches: probabilities, logits
    heights = rows + ([max(0.7, 0.22 * parts.branches)] if gated else [])  # and gates
    width, height = 1.9 * n + 1.9, sum(heights) + 0.55 * len(heights) + 0.5  # inches
    fig = Figure(figsize=(width, height), dpi=dpi)
    grid = fig.add_gridspec(
        len(heights), n + 1, height_ratios=heights, width_ratios=[1] * n + [0.06]
    )
    grid.update(  # margins in inches: class names on the left, colour bars on the right
        left=1.3 / width,
        right=1 - 0.45 / width,
        top=1 - 0.5 / height,
        bottom=0.35 / height,
        hspace=0.55 * len(heights) / sum(heights),
        wspace=0.2,
    )
    logit_img = gate_img = None
    for k, column in enumerate(parts.columns):
        _static_probs(fig.add_subplot(grid[0, k]), column, parts.classes, first=k == 0)
        logit_img = _static_logits(fig.add_subplot(grid[1, k]), column, parts, first=k == 0)
        if gated:
            img = _static_gates(fig.add_subplot(grid[2, k]), column)
            gate_img = gate_img if img is None else img
    fig.colorbar(logit_img, cax=fig.add_subplot(grid[1, n])).ax.tick_params(labelsize=7)
    if gate_img is not None:
        fig.colorbar(gate_img, cax=fig.add_subplot(grid[2, n])).ax.tick_params(labelsize=7)
    return fig


def _static_probs(ax, c: GridColumn, classes: Sequence[str], *, first: bool) -> None:
    """Run ``c``'s probabilities as horizontal bars on ``ax``, each value printed by its bar;
    class names only on the ``first`` column."""
    nc = len(classes)
    ax.barh(range(nc), c.probs, color=c.colours)
    for i, (p, text) in enumerate(zip(c.probs, c.prob_text)):  # inside a long bar, after a short
        inside = p > 0.75
        ax.text(
            p - 0.02 if inside else p + 0.02,
            i,
            text,
            va="center",
            ha="right" if inside else "left",
            color="white" if inside else "black",
            fontsize=8,
        )
    ax.set_xlim(0, 1)
    ax.set_xticks([0, 0.5, 1], ["0", ".5", "1"])
    ax.set_ylim(nc - 0.5, -0.5)
    ax.set_yticks(range(nc), classes if first else [""] * nc, fontsize=8)
    ax.tick_params(labelsize=8)
    ax.set_title(c.label.replace(" (", "\n(", 1), fontsize=9)
    if first:
        ax.set_ylabel("probability", fontsize=9)


def _static_logits(ax, c: GridColumn, parts: GridParts, *, first: bool):
    """Run ``c``'s logits as an image on ``ax`` (the shared scale -top..top), each value
    printed in its cell; returns the image (for the colour bar)."""
    nc = len(parts.classes)
    img = ax.imshow(c.logits, cmap="RdBu_r", vmin=-parts.top, vmax=parts.top, aspect="auto")
    for (i, j), v in np.ndenumerate(c.logits):
        ax.text(
            j,
            i,
            c.logit_text[i][j],
            ha="center",
            va="center",
            fontsize=7,
            color="white" if abs(v) > 0.6 * parts.top else "black",
        )
    ax.set_xticks(range(len(c.logit_cols)), c.logit_cols, fontsize=8)
    ax.set_yticks(range(nc), parts.classes if first else [""] * nc, fontsize=8)
    ax.set_xlabel(c.logit_title, fontsize=8)
    if first:
        ax.set_ylabel("logits", fontsize=9)
    return img


def _static_gates(ax, c: GridColumn):
    """Run ``c``'s gates (0..1) as an image on ``ax``, rows branches, columns channels; for a
    run without gates, 'no gates'. Returns the image, or None."""
    if c.attention is None:
        ax.axis("off")
        ax.text(0.5, 0.5, "no gates", ha="center", va="center", transform=ax.transAxes, fontsize=8)
        return None
    img = ax.imshow(
        c.attention, cmap="viridis", vmin=0, vmax=1, aspect="auto", interpolation="nearest"
    )
    ax.set_yticks(range(len(c.gate_ticks)), c.gate_ticks, fontsize=7)
    ax.set_xticks([])
    ax.set_xlabel("channel", fontsize=8)
    return img
