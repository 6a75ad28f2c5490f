"""Figures of a comparison: per-class F1 bars and confusion matrices (plotly; PNG by matplotlib)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .tables import _out_dir


def _f1_entries(comparison: Mapping[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """Classes and, per run, its F1 values and interval half-widths (for error bars)."""
    doc = comparison["json"]
    classes = doc["classes"]
    series = []
    for run in doc["runs"]:
        v = np.array([run["per_class"][c]["f1"] for c in classes])
        lo = np.array([run["per_class"][c]["f1_ci"][0] for c in classes])
        hi = np.array([run["per_class"][c]["f1_ci"][1] for c in classes])
        series.append({"name": run["name"], "f1": v, "minus": v - lo, "plus": hi - v})
    return classes, series


def f1_bar_figure(comparison: Mapping[str, Any]):
    """Plotly grouped bar chart of per-class F1 per run with 95% bootstrap error bars."""
    import plotly.graph_objects as go

    classes, series = _f1_entries(comparison)
    fig = go.Figure()
    for s in series:
        fig.add_trace(
            go.Bar(
                name=s["name"],
                x=classes,
                y=s["f1"],
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": s["plus"],
                    "arrayminus": s["minus"],
                },
            )
        )
    level = round(100 * comparison["json"]["bootstrap"]["level"])
    fig.update_layout(
        barmode="group",
        title=f"Per-class F1 with {level}% bootstrap intervals",
        yaxis={"title": "F1", "range": [0, 1.05]},
        xaxis={"title": "class"},
        legend={"title": "run"},
    )
    return fig


def _confusions(comparison: Mapping[str, Any], normalize: bool) -> list[tuple[str, np.ndarray]]:
    out = []
    for run in comparison["json"]["runs"]:
        cm = np.asarray(run["confusion_matrix"], dtype=np.float64)
        if normalize:  # rows sum to 1: recall on the diagonal, comparable across class sizes
            rows = cm.sum(axis=1, keepdims=True)
            cm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
        out.append((run["name"], cm))
    return out


def _grid_shape(n: int) -> tuple[int, int]:
    cols = min(n, 3)
    return math.ceil(n / cols), cols


def confusion_figure(comparison: Mapping[str, Any], normalize: bool = True):
    """Plotly grid of confusion matrices (rows: true class, columns: predicted), one per run."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    classes = comparison["json"]["classes"]
    mats = _confusions(comparison, normalize)
    nrows, ncols = _grid_shape(len(mats))
    fig = make_subplots(rows=nrows, cols=ncols, subplot_titles=[n for n, _ in mats])
    raw = _confusions(comparison, False)
    for k, ((name, cm), (_, counts)) in enumerate(zip(mats, raw, strict=True)):
        text = [
            [f"{cm[i, j]:.2f}<br>({int(counts[i, j])})" if normalize else str(int(cm[i, j]))
             for j in range(len(classes))]
            for i in range(len(classes))
        ]  # fmt: skip
        fig.add_trace(
            go.Heatmap(
                z=cm,
                x=classes,
                y=classes,
                text=text,
                texttemplate="%{text}",
                colorscale="Blues",
                zmin=0,
                zmax=1 if normalize else float(max(m.max() for _, m in mats) or 1),
                showscale=k == 0,
                hovertemplate="true %{y}<br>predicted %{x}<br>%{text}<extra>" + name + "</extra>",
            ),
            row=k // ncols + 1,
            col=k % ncols + 1,
        )
    fig.update_yaxes(autorange="reversed", title_text="true")
    fig.update_xaxes(title_text="predicted")
    fig.update_layout(
        title="Confusion matrices" + (" (row-normalised; counts in brackets)" if normalize else ""),
        height=380 * nrows,
        width=max(520, 420 * ncols),
    )
    return fig


def _f1_bar_png(comparison: Mapping[str, Any], path: Path) -> None:
    # The object-oriented API with an explicit Agg canvas: no pyplot state and no global
    # backend switch, so this is safe inside the dashboard process and without a display.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    classes, series = _f1_entries(comparison)
    fig = Figure(figsize=(max(6.0, 1.2 * len(classes) * max(1, len(series)) / 2 + 3), 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = np.arange(len(classes))
    width = 0.8 / max(1, len(series))
    for k, s in enumerate(series):
        ax.bar(
            x - 0.4 + width * (k + 0.5),
            s["f1"],
            width,
            yerr=np.vstack([s["minus"], s["plus"]]),
            capsize=3,
            label=s["name"],
        )
    ax.set_xticks(x, classes, rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("F1")
    level = round(100 * comparison["json"]["bootstrap"]["level"])
    ax.set_title(f"Per-class F1 with {level}% bootstrap intervals")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _confusion_png(comparison: Mapping[str, Any], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    classes = comparison["json"]["classes"]
    mats = _confusions(comparison, True)
    raw = _confusions(comparison, False)
    nrows, ncols = _grid_shape(len(mats))
    size = 1.0 + 0.7 * len(classes)
    fig = Figure(figsize=(size * ncols + 1, size * nrows + 0.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        if k >= len(mats):
            ax.set_axis_off()
            continue
        name, cm = mats[k]
        counts = raw[k][1]
        ax.imshow(cm, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(
                    j,
                    i,
                    f"{cm[i, j]:.2f}\n({int(counts[i, j])})",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if cm[i, j] > 0.6 else "black",
                )
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(classes)), classes, fontsize=7)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
        ax.set_title(name, fontsize=9)
    fig.suptitle("Confusion matrices (row-normalised; counts in brackets)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_figures(comparison: Mapping[str, Any], out_dir: str | os.PathLike) -> list[Path]:
    """Per-class F1 bars and the confusion-matrix grid as PNG and self-contained HTML.

    The HTML files embed plotly.js (``include_plotlyjs=True``, about 4 MB each) because nothing
    may be fetched at run time: they open offline.
    """
    d = _out_dir(out_dir, "figures")
    written = []
    for stem, make_png, make_fig in (
        ("per_class_f1", _f1_bar_png, f1_bar_figure),
        ("confusion_matrices", _confusion_png, confusion_figure),
    ):
        png = d / f"{stem}.png"
        make_png(comparison, png)
        html = d / f"{stem}.html"
        make_fig(comparison).write_html(html, include_plotlyjs=True, full_html=True)
        written += [png, html]
    return written
