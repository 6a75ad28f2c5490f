"""The Runs (home) page's table and class-distribution figure (no Streamlit here).

The class distribution comes twice: a plotly chart (the HTML download) and a matplotlib picture
(what the page shows, drawn once on the server); both draw :func:`distribution_bars`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from csba.identity import head_and_method, protocol_changes, protocol_text
from pages.fig_base import PALETTE, finish_layout, mpl_colour, number, png
from pages.figcache import cached_figure

__all__ = [
    "SPLITS",
    "class_distribution",
    "class_distribution_figure",
    "class_distribution_png",
    "class_distribution_static",
    "distribution_bars",
    "minority_class",
    "runs_table",
]

SPLITS = ("train", "val", "test")  # the bar groups, in this order and PALETTE's first colours


def minority_class(meta: Mapping[str, Any]) -> str | None:
    """The class with the fewest training images (first on ties), or None."""
    classes = list(meta.get("classes") or [])
    counts = ((meta.get("dataset") or {}).get("counts") or {}).get("train")
    if not classes or not isinstance(counts, list) or len(counts) != len(classes):
        return None
    return str(classes[int(np.argmin(counts))])


def runs_table(infos: Sequence[Any]) -> pd.DataFrame:
    """One row per readable run: the Home page's table."""
    rows = []
    for info in infos:
        m = info.meta
        if m is None:
            continue
        test = (m.get("metrics") or {}).get("test") or {}
        minority = minority_class(m)
        pc = (test.get("per_class") or {}).get(minority or "", {})
        ds = m.get("dataset") or {}
        cfg = m.get("config") or {}
        head, method = head_and_method(m)
        rows.append(
            {
                "dataset": ds.get("name") or cfg.get("dataset"),
                "variant": m.get("variant"),
                "head": head or None,
                "method": method or None,
                "backbone": cfg.get("backbone") or "trifire",
                "seed": cfg.get("seed"),
                "image size": ds.get("image_size") or cfg.get("image_size"),
                "parameters": m.get("parameters"),
                "epochs": m.get("epochs_run"),
                "accuracy": number(test.get("accuracy")),
                "macro-F1": number(test.get("macro_f1")),
                "minority F1": number(pc.get("f1")),
                "minority class": minority,
                "views": int((m.get("evaluation") or {}).get("views") or 1),
                "protocol": protocol_text(protocol_changes(m)),
                "created": str(m.get("created") or "")[:16].replace("T", " "),
                "status": m.get("status"),
                "diagnosed": isinstance(m.get("diagnostics"), dict),
                "path": str(info.path),
            }
        )
    df = pd.DataFrame(rows)
    if not df.empty:
        for col in ("seed", "image size", "parameters", "epochs", "views"):
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    return df


def class_distribution(meta: Mapping[str, Any]) -> pd.DataFrame:
    """Per-class train/val/test counts with totals and share of the training split."""
    classes = [str(c) for c in meta.get("classes") or []]
    counts = (meta.get("dataset") or {}).get("counts") or {}
    df = pd.DataFrame({"class": classes})
    for split in SPLITS:
        vals = counts.get(split)
        ok = isinstance(vals, list) and len(vals) == len(classes)
        df[split] = pd.array(vals if ok else [None] * len(classes), dtype="Int64")
    df["total"] = df[list(SPLITS)].sum(axis=1, min_count=1)
    train_total = df["train"].sum()
    df["train share"] = (df["train"] / train_total).astype(float) if train_total else np.nan
    return df


def distribution_bars(dist: pd.DataFrame) -> tuple[list[str], list[tuple[str, pd.Series, str]]]:
    """What both class-distribution pictures draw (``dist``: :func:`class_distribution`): the
    class names, and per split in SPLITS order its counts per class (C,) (a numeric Series,
    <NA> where run.json has none) and its colour (plotly's 'rgb(r, g, b)')."""
    classes = [str(c) for c in dist["class"]]
    bars = [
        (split, pd.to_numeric(dist[split], errors="coerce"), PALETTE[k])
        for k, split in enumerate(SPLITS)
    ]
    return classes, bars


@cached_figure
def class_distribution_figure(dist: pd.DataFrame, title: str) -> go.Figure:
    """The class distribution as a plotly chart: grouped bars per split, counts on them."""
    classes, bars = distribution_bars(dist)
    fig = go.Figure()
    for split, counts, colour in bars:
        fig.add_trace(
            go.Bar(
                name=split,
                x=classes,
                y=counts,
                marker_color=colour,
                text=counts,
                textposition="outside",
                hovertemplate="%{x}<br>" + split + ": %{y}<extra></extra>",
            )
        )
    fig.update_layout(
        barmode="group",
        legend={"orientation": "h", "y": 1.02, "x": 1, "xanchor": "right", "yanchor": "bottom"},
    )
    fig.update_yaxes(title_text="images")
    return finish_layout(fig, title, 380)


@cached_figure
def class_distribution_png(dist: pd.DataFrame, title: str, dpi: int = 100) -> bytes:
    """:func:`class_distribution_figure` as a picture drawn once on the server (matplotlib): the
    Runs page's first sight. A plotly chart costs the browser about 0.2 s of drawing per view
    whatever its size (benchmarks/bench_dashboard.py); the HTML download stays interactive."""
    return png(class_distribution_static(dist, title, dpi))


def class_distribution_static(dist: pd.DataFrame, title: str, dpi: int = 100):
    """The class distribution as a matplotlib Figure: grouped bars per split, counts on them
    (an unknown count drawn as 0)."""
    from matplotlib.figure import Figure  # no pyplot: no global state, safe in any thread

    classes, bars = distribution_bars(dist)
    fig = Figure(figsize=(6.4, 3.6), dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(classes))
    for k, (split, counts, colour) in enumerate(bars):
        heights = counts.astype(float).fillna(0).to_numpy()  # (C,) images
        drawn = ax.bar(x + (k - 1) * 0.27, heights, 0.27, label=split, color=mpl_colour(colour))
        ax.bar_label(drawn, [f"{c:.0f}" for c in heights], fontsize=7, padding=1)
    ax.set_xticks(x, classes, fontsize=8)
    ax.set_ylabel("images", fontsize=9)
    ax.tick_params(axis="y", labelsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=8, ncols=3, frameon=False, loc="lower right", bbox_to_anchor=(1, 1))
    ax.set_title(title, fontsize=10, loc="left")
    return fig
