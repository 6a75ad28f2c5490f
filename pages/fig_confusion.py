"""The Confusion matrices page's figures and tables (no Streamlit here)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from pages.fig_base import (
    DIFF_SCALE,
    DIFF_WIDTH,
    SEQ_SCALE,
    add_grid_heatmap,
    as_matrix,
    finish_grid,
    heatmap_grid,
    matrix_heatmap,
)
from pages.figcache import cached_figure

__all__ = [
    "confusion_difference",
    "confusion_grid",
    "confusion_long",
    "confusion_of",
    "row_normalise",
]


def row_normalise(cm: np.ndarray) -> np.ndarray:
    """Counts (C, C) as rates of their true row (rows sum to 1; an empty row stays 0)."""
    cm = np.asarray(cm, dtype=float)
    rows = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)


def confusion_of(meta: Mapping[str, Any], split: str = "test") -> np.ndarray | None:
    """The stored confusion matrix of a split (rows true, columns predicted), or None."""
    cm = as_matrix(((meta.get("metrics") or {}).get(split) or {}).get("confusion_matrix"))
    if cm is None and split == "test":
        pred = (meta.get("predictions") or {}).get("test") or {}
        yt, yp = pred.get("y_true"), pred.get("y_pred")
        c = int(meta.get("num_classes") or 0)
        if yt is not None and yp is not None and c:
            cm = np.zeros((c, c))
            np.add.at(cm, (np.asarray(yt, int), np.asarray(yp, int)), 1)
    return cm


def _add_run(fig, name, counts, classes, normalize: bool, geo: dict, k: int, cols: int) -> None:
    """Run k's heatmap (counts (C, C)) in its subplot, and its click overlay tagged k."""
    rates = row_normalise(counts)
    # one line per cell (the rate or the count; the hover gives both): half the text
    text = [
        [f"{rates[i, j]:.2f}" if normalize else f"{int(counts[i, j])}" for j in range(len(classes))]
        for i in range(len(classes))
    ]
    hover = (
        f"<b>{name}</b><br>true %{{y}}<br>predicted %{{x}}"
        "<br>count %{customdata[0]:.0f}<br>rate (of true row) %{customdata[1]:.3f}"
        "<extra></extra>"
    )
    z, data = (rates if normalize else counts), np.dstack([counts, rates])
    add_grid_heatmap(fig, geo, k, cols, z, classes, text=text, hover=hover, customdata=data)


@cached_figure
def confusion_grid(
    mats: Mapping[str, np.ndarray],
    classes: Sequence[str],
    *,
    normalize: bool,
    zmax: float | None = None,
    cols: int = 3,
) -> go.Figure:
    """Every run's confusion matrix in one figure (name -> counts (C, C)), ``cols`` per row, one
    shared colour scale (rates 0-1, or counts 0-zmax). One figure rather than one per run: the
    browser draws one chart, a few times faster than as many charts as runs. Laid out for
    PAGE_WIDTH: titles wrapped to their subplot's width, class names as in
    :func:`heatmap_layout`, cell numbers only where they fit (always in the hover)."""
    names = list(mats)
    top = 1.0 if normalize else float(zmax or max(float(m.max()) for m in mats.values()) or 1)
    titles = [f"{name} (n={int(np.asarray(mats[name]).sum())})" for name in names]
    fig, geo = heatmap_grid(titles, classes, cols, chars=4 if normalize else len(str(int(top))))
    for k, name in enumerate(names):
        _add_run(fig, name, np.asarray(mats[name], dtype=float), classes, normalize, geo, k, cols)
    bar = {"title": {"text": "rate" if normalize else "count"}, "thickness": 12}
    finish_grid(fig, geo, {"colorscale": SEQ_SCALE, "cmin": 0, "cmax": top, "colorbar": bar})
    for k in range(max(0, len(names) - cols), len(names)):  # (rows: true class, in the caption)
        fig.update_xaxes(title_text="predicted", row=k // cols + 1, col=k % cols + 1)
    return fig


@cached_figure
def confusion_difference(
    a: np.ndarray, b: np.ndarray, classes: Sequence[str], *, normalize: bool, names: tuple[str, str]
) -> go.Figure:
    """Run a minus run b (counts (C, C) each), as rates of the true row (``normalize``) or as
    counts, on a diverging scale centred on 0; both runs' values in the hover."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    za, zb = (row_normalise(a), row_normalise(b)) if normalize else (a, b)
    d = za - zb
    lim = 1.0 if normalize else float(np.abs(d).max() or 1)
    custom = np.dstack([za, zb])
    fmt = ".3f" if normalize else ".0f"
    what = "rate" if normalize else "count"
    return matrix_heatmap(
        d,
        classes,
        classes,
        title=f"{names[0]} minus {names[1]} ({what}s)",
        zmin=-lim,
        zmax=lim,
        colorscale=DIFF_SCALE,
        colorbar=f"Δ {what}",
        digits=2 if normalize else 0,
        customdata=custom,
        hover=f"true %{{y}}<br>predicted %{{x}}<br>{names[0]}: %{{customdata[0]:{fmt}}}"
        f"<br>{names[1]}: %{{customdata[1]:{fmt}}}<br>difference %{{z:+{fmt}}}",
        xlabel="predicted",
        ylabel="true",
        width=DIFF_WIDTH,
    )


def confusion_long(mats: Mapping[str, np.ndarray], classes: Sequence[str]) -> pd.DataFrame:
    """Every run's matrix as one long table (for CSV): run, true, predicted, count, rate."""
    rows = []
    for name, cm in mats.items():
        rates = row_normalise(cm)
        for i, t in enumerate(classes):
            for j, p in enumerate(classes):
                rows.append(
                    {
                        "run": name,
                        "true": t,
                        "predicted": p,
                        "count": int(cm[i, j]),
                        "rate": float(rates[i, j]),
                    }
                )
    return pd.DataFrame(rows)
