"""Tables and plotly figures the dashboard pages render (no Streamlit here).

Everything takes plain metadata (run.json dicts) or arrays and returns a DataFrame or a plotly
figure, so it is testable without a browser and the page files stay thin.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from csba.diagnostics import off_diagonal_stats  # noqa: F401 (used by the pages via F.)
from csba.diagnostics import sorted_pairs as adversarial_pairs  # noqa: F401
from csba.report import protocol_changes

# Diverging scale for cosines: red = conflict (negative), white = 0, blue = agreement.
CONFLICT_SCALE = px.colors.diverging.RdBu
# Diverging scale for differences that are neither good nor bad (confusion cells): no red/blue.
DIFF_SCALE = px.colors.diverging.PRGn
SEQ_SCALE = "Blues"
PALETTE = px.colors.qualitative.Safe
FONT = {"size": 13}

# Layout assumptions (px). Streamlit's wide layout leaves about 1180 px of page beside the sidebar
# on a 1600 px screen; the charts stretch to their column, but a heatmap's height, its cell
# numbers and its tick labels are chosen here, for the width the page is expected to give it.
PAGE_WIDTH = 1180  # a chart across the page (the confusion grid)
HEATMAP_WIDTH = 380  # one of 3 columns (pages/conflict.py, pages/attention.py: COLS = 3)
HALF_WIDTH = 580  # one of 2 columns (branch overlap)
DIFF_WIDTH = 760  # the left of st.columns([2, 1]) (difference of two runs)
CELL_FONT = 10  # cell numbers; plotly's own size follows the cell, down to ~5 px
TICK_FONT = 11  # class names on heatmap axes
TITLE_FONT = 14  # heatmap titles
SUBTITLE_FONT = 12  # subplot titles of the confusion grid
CHAR_EM = 0.6  # mean character width / font size (Open Sans, Arial): ~7 px at 12 px
LINE_EM = 1.3  # line height / font size: the closest two stacked labels may sit
LABEL_CHARS = 18  # longer class names are shortened on ticks (the hover gives the full name);
# 18 keeps ELPV's "possibly-defective" whole
COLORBAR_PX = 70  # a colour bar with its ticks and title, right of the plot
MAX_HEIGHT = 900  # the tallest heatmap figure

# One template, built once: plotly_white with our font. Set as the default, every new figure
# takes it unvalidated; naming a template per figure (update_layout(template=...)) validated and
# deep-copied it each time, about a third of a page's script time (benchmarks/bench_dashboard.py).
# (Template(base, layout=...) would replace the base's layout, automargin and all: update it.)
_TEMPLATE = go.layout.Template(pio.templates["plotly_white"])
_TEMPLATE.layout.update(font=FONT)
pio.templates["csba"] = _TEMPLATE
pio.templates.default = "csba"


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def as_matrix(x: Any) -> np.ndarray | None:
    """A JSON matrix (None for NaN) as a float ndarray, or None when unusable."""
    if x is None:
        return None
    try:
        m = np.array([[np.nan if v is None else float(v) for v in row] for row in x], float)
    except (TypeError, ValueError):
        return None
    return m if m.ndim == 2 and m.size else None


def as_array(x: Any) -> np.ndarray | None:
    """A nested JSON list (None for NaN) as a float ndarray, or None."""
    if x is None:
        return None
    try:
        return np.array(_none_to_nan(x), dtype=float)
    except (TypeError, ValueError):
        return None


def _none_to_nan(x: Any) -> Any:
    if isinstance(x, list):
        return [_none_to_nan(v) for v in x]
    return np.nan if x is None else x


def number(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v


def fmt_ci(v: float, lo: float, hi: float, digits: int = 3, signed: bool = False) -> str:
    if not np.isfinite(v):
        return "-"
    s = "+" if signed else ""
    return f"{v:{s}.{digits}f} [{lo:{s}.{digits}f}, {hi:{s}.{digits}f}]"


def _layout(fig: go.Figure, title: str | None = None, height: int | None = None) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0, "xanchor": "left"} if title else None,
        margin={"l": 10, "r": 10, "t": 60 if title else 20, "b": 10},
        **({"height": height} if height else {}),
    )
    return fig


def text_px(text: str, size: float) -> float:
    """Estimated width (px) of one line of ``text`` at font ``size`` (px)."""
    return len(text) * CHAR_EM * size


def wrap(text: str, width: float, size: float) -> str:
    """``text`` broken at spaces (a longer word cut) into '<br>'-joined lines of at most
    ``width`` px at font ``size`` px."""
    chars = max(4, int(width // (CHAR_EM * size)))
    return "<br>".join(textwrap.wrap(text, chars, break_on_hyphens=False) or [text])


def short_labels(names: Sequence[Any], limit: int = LABEL_CHARS) -> list[str]:
    """Tick labels of at most ``limit`` characters, still distinct: names that fit as they are;
    where some do not, a first word all share dropped ('head functional' -> 'functional'), the
    words of longer ones cut to a common length ('possibly-defective' -> 'possi-defec'), a
    single long word cut with '…'; numbered ('3.possibly…') where cuts would collide."""
    names = [str(n) for n in names]
    first = re.match(r"[^-_ ]+[-_ ]+", names[0]) if names else None
    if first and any(len(n) > limit for n in names) and all(n.startswith(first[0]) for n in names):
        names = [n.removeprefix(first[0]) or n for n in names]
    out = [n if len(n) <= limit else _abbreviate(n, limit) for n in names]
    if len(set(out)) < len(set(names)):
        out = [n if len(n) <= limit else _short(f"{k}.{n}", limit) for k, n in enumerate(names)]
    return out


def _abbreviate(name: str, limit: int) -> str:
    """``name`` in at most ``limit`` characters: every word (split at '-', '_', ' ') longer than
    4 letters cut to the longest common length that fits ('head pos-def'), separators and short
    words kept; a single word cut with '…'."""
    parts = re.split(r"([-_ ]+)", name)  # words at even positions, separators at odd
    words = parts[::2]
    if len(words) > 1:
        for k in range(max(len(w) for w in words) - 1, 1, -1):
            cut = "".join(p if i % 2 or len(p) <= 4 else p[:k] for i, p in enumerate(parts))
            if len(cut) <= limit:
                return cut
    return _short(name, limit)


def category_ticks(
    names: Sequence[Any], labels: Sequence[str], pitch: float, *, across: bool
) -> tuple[dict, float]:
    """Axis settings for category ticks ``pitch`` px apart, and the px the labels take across
    the axis. An x axis (``across``) keeps its labels level while the longest fits a cell, tilts
    them -45 degrees while tilted ones clear each other, else turns them vertical; where even
    so neighbours would overlap (less than a line apart) only every ``step``-th is labelled.
    The hover still names every cell in full."""
    longest = max((text_px(v, TICK_FONT) for v in labels), default=0.0)
    line = LINE_EM * TICK_FONT  # px: the least distance between two stacked labels
    angle, extent, need = 0, longest + 8, line  # y: level labels, one line each
    if across and longest + 6 <= pitch:
        angle, extent, need = 0, line, longest + 6
    elif across and pitch >= line * math.sqrt(2):  # tilted: neighbours pitch/sqrt(2) apart
        angle, extent, need = -45, (longest + line) / math.sqrt(2), line * math.sqrt(2)
    elif across:
        angle, extent, need = -90, longest + 6, line
    step = max(1, math.ceil(need / max(pitch, 1e-9)))
    axis = {
        "tickmode": "array",
        "tickvals": list(names)[::step],
        "ticktext": list(labels)[::step],
        "tickangle": angle,
        "tickfont": {"size": TICK_FONT},
    }
    return axis, extent


def heatmap_layout(
    x: Sequence[Any],
    y: Sequence[Any],
    *,
    width: float,
    text_chars: int,
    square: bool,
    title_lines: int = 0,
    xlabel: bool = False,
    ylabel: bool = False,
) -> dict:
    """How a heatmap of len(y) rows x len(x) columns fits ``width`` px (its column on the page):
    ``cell`` (w, h) px, ``show_text`` (whether numbers of ``text_chars`` characters fit a cell
    at CELL_FONT), the x and y tick settings (see :func:`category_ticks`), ``height`` and
    ``margin`` of the figure. Square cells unless ``square`` is false, then as near as
    MAX_HEIGHT allows."""
    xs, ys = short_labels(x), short_labels(y)
    left = max(text_px(v, TICK_FONT) for v in ys) + 8 + (20 if ylabel else 0)  # y ticks, title
    plot_w = max(40.0, width - left - COLORBAR_PX - 20)  # 20: the side margins
    cell_w = plot_w / len(x)
    top = 20 + (title_lines * LINE_EM * TITLE_FONT + 10 if title_lines else 0)
    xaxis, x_px = category_ticks(x, xs, cell_w, across=True)
    bottom = 10 + x_px + (20 if xlabel else 0)
    cell_h = cell_w
    if not square:  # e.g. classes x 3 branches: no taller than MAX_HEIGHT
        cell_h = min(cell_w, max(LINE_EM * TICK_FONT, (MAX_HEIGHT - top - bottom) / len(y)))
    yaxis, _ = category_ticks(y, ys, cell_h, across=False)
    fits = cell_w >= text_chars * CHAR_EM * CELL_FONT + 4 and cell_h >= LINE_EM * CELL_FONT
    return {
        "cell": (cell_w, cell_h),
        "show_text": bool(text_chars) and fits,
        "xaxis": xaxis,
        "yaxis": yaxis,
        "height": round(min(MAX_HEIGHT, top + cell_h * len(y) + bottom)),
        "margin": {"l": 10, "r": 10, "t": round(top), "b": 10},
    }


def matrix_heatmap(
    z: np.ndarray,
    x: Sequence[str],
    y: Sequence[str],
    *,
    title: str,
    zmin: float,
    zmax: float,
    colorscale: Any = SEQ_SCALE,
    colorbar: str = "",
    digits: int = 2,
    hover: str = "%{y} / %{x}: %{z:.3f}",
    customdata: np.ndarray | None = None,
    text: Sequence[Sequence[str]] | None = None,
    show_text: bool = True,
    xlabel: str = "",
    ylabel: str = "",
    height: int | None = None,
    width: float = HEATMAP_WIDTH,
    square: bool | None = None,
) -> go.Figure:
    """An annotated heatmap with the first row at the top, laid out for ``width`` px (the
    column the page gives it, see :func:`heatmap_layout`): square cells (``square``, by default
    when x and y are alike), numbers at CELL_FONT px where they fit a cell and only in the hover
    (``hover``, which should give %{z}) where not, long names shortened on the ticks."""
    z = np.asarray(z, dtype=float)
    if text is None and show_text:
        text = [["" if not np.isfinite(v) else f"{v:.{digits}f}" for v in row] for row in z]
    square = list(x) == list(y) if square is None else square
    title_text = wrap(title, width - 20, TITLE_FONT) if title else None
    geo = heatmap_layout(
        x,
        y,
        width=width,
        text_chars=max((len(str(v)) for row in text for v in row), default=0) if show_text else 0,
        square=square,
        title_lines=title_text.count("<br>") + 1 if title_text else 0,
        xlabel=bool(xlabel),
        ylabel=bool(ylabel),
    )
    show = show_text and geo["show_text"]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(x),
            y=list(y),
            zmin=zmin,
            zmax=zmax,
            colorscale=colorscale,
            text=text if show else None,
            texttemplate="%{text}" if show else None,
            textfont={"size": CELL_FONT},
            customdata=customdata,
            hovertemplate=hover + "<extra></extra>",
            colorbar={"title": {"text": colorbar}, "thickness": 12},
            hoverongaps=False,
            xgap=1,
            ygap=1,
        )
    )
    fig.update_yaxes(autorange="reversed", title_text=ylabel, type="category", **geo["yaxis"])
    fig.update_xaxes(title_text=xlabel, type="category", **geo["xaxis"])
    if square:  # one px per unit on both axes: square cells whatever width the page gives
        fig.update_yaxes(scaleanchor="x", scaleratio=1, constrain="domain")
        fig.update_xaxes(constrain="domain")
    fig.update_layout(
        title={"text": title_text, "x": 0, "xanchor": "left", "font": {"size": TITLE_FONT}}
        if title_text
        else None,
        margin=geo["margin"],
        height=height or geo["height"],
    )
    return fig


# --------------------------------------------------------------------------------------------
# Home
# --------------------------------------------------------------------------------------------


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
        rows.append(
            {
                "dataset": ds.get("name") or cfg.get("dataset"),
                "variant": m.get("variant"),
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
                "protocol": ", ".join(f"{k} {v}" for k, v in protocol_changes(m).items())
                or "pinned",
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
    for split in ("train", "val", "test"):
        vals = counts.get(split)
        ok = isinstance(vals, list) and len(vals) == len(classes)
        df[split] = pd.array(vals if ok else [None] * len(classes), dtype="Int64")
    df["total"] = df[["train", "val", "test"]].sum(axis=1, min_count=1)
    train_total = df["train"].sum()
    df["train share"] = (df["train"] / train_total).astype(float) if train_total else np.nan
    return df


def class_distribution_figure(dist: pd.DataFrame, title: str) -> go.Figure:
    fig = go.Figure()
    for k, split in enumerate(("train", "val", "test")):
        fig.add_trace(
            go.Bar(
                name=split,
                x=dist["class"],
                y=dist[split],
                marker_color=PALETTE[k],
                text=dist[split],
                textposition="outside",
                hovertemplate="%{x}<br>" + split + ": %{y}<extra></extra>",
            )
        )
    fig.update_layout(
        barmode="group",
        legend={"orientation": "h", "y": 1.02, "x": 1, "xanchor": "right", "yanchor": "bottom"},
    )
    fig.update_yaxes(title_text="images")
    return _layout(fig, title, 380)


def class_distribution_png(dist: pd.DataFrame, title: str, dpi: int = 100) -> bytes:
    """:func:`class_distribution_figure` as a picture drawn once on the server (matplotlib): the
    Runs page's first sight. A plotly chart costs the browser about 0.2 s of drawing per view
    whatever its size (benchmarks/bench_dashboard.py); the HTML download stays interactive."""
    return png(class_distribution_static(dist, title, dpi))


def class_distribution_static(dist: pd.DataFrame, title: str, dpi: int = 100):
    """The class distribution as a matplotlib Figure: grouped bars per split, counts on them."""
    from matplotlib.figure import Figure  # no pyplot: no global state, safe in any thread

    fig = Figure(figsize=(6.4, 3.6), dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(dist))
    for k, split in enumerate(("train", "val", "test")):
        counts = pd.to_numeric(dist[split], errors="coerce").astype(float).fillna(0).to_numpy()
        bars = ax.bar(x + (k - 1) * 0.27, counts, 0.27, label=split, color=_mpl_colour(PALETTE[k]))
        ax.bar_label(bars, [f"{c:.0f}" for c in counts], fontsize=7, padding=1)
    ax.set_xticks(x, [str(c) for c in dist["class"]], fontsize=8)
    ax.set_ylabel("images", fontsize=9)
    ax.tick_params(axis="y", labelsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=8, ncols=3, frameon=False, loc="lower right", bbox_to_anchor=(1, 1))
    ax.set_title(title, fontsize=10, loc="left")
    return fig


def _mpl_colour(c: str) -> tuple[float, ...]:
    """plotly's 'rgb(r, g, b)' as matplotlib's (r, g, b) in 0..1 (the same palette on both)."""
    return tuple(v / 255 for v in px.colors.unlabel_rgb(c))


def png(fig) -> bytes:
    """A matplotlib figure's PNG bytes."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# Confusion matrices
# --------------------------------------------------------------------------------------------


def row_normalise(cm: np.ndarray) -> np.ndarray:
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


def _grid_layout(titles: Sequence[str], classes: Sequence[str], cols: int, chars: int) -> dict:
    """The confusion grid's layout across PAGE_WIDTH px, ``cols`` subplots per row: ``titles``
    wrapped to a subplot's width at SUBTITLE_FONT (so neighbours never run into each other),
    the tick settings of :func:`category_ticks`, whether cell numbers of ``chars`` characters
    fit at CELL_FONT, the spacings (fractions of the plot area), margins and height (px)."""
    n, rows = len(classes), max(1, math.ceil(len(titles) / cols))
    labels = short_labels(classes)
    spacing = 0.04  # of the plot width, between neighbouring subplots (and their titles)
    left = max(text_px(v, TICK_FONT) for v in labels) + 8  # px: class names left of each row
    sub_w = (PAGE_WIDTH - left - COLORBAR_PX - 20) * (1 - spacing * (cols - 1)) / cols  # px
    wrapped = [wrap(t, sub_w, SUBTITLE_FONT) for t in titles]
    title_px = max((t.count("<br>") + 1 for t in wrapped), default=1) * LINE_EM * SUBTITLE_FONT
    per_row = max(220, 60 * n)  # plot height per row (px)
    xaxis, x_px = category_ticks(classes, labels, sub_w / n, across=True)
    yaxis, _ = category_ticks(classes, labels, per_row / n, across=False)
    gap = x_px + 35 + title_px  # px between rows: class names, 'predicted', the next titles
    plot_h = per_row * rows + gap * (rows - 1)
    margin = {"l": 10, "r": 10, "t": round(18 + title_px), "b": round(x_px + 35)}
    return {
        "rows": rows,
        "titles": wrapped,
        "spacing": spacing,
        "vertical_spacing": gap / plot_h if rows > 1 else 0.0,
        "xaxis": xaxis,
        "yaxis": yaxis,
        "show_text": sub_w / n >= chars * CHAR_EM * CELL_FONT + 4
        and per_row / n >= LINE_EM * CELL_FONT,
        "margin": margin,
        "height": round(plot_h + margin["t"] + margin["b"]),
    }


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
    geo = _grid_layout(titles, classes, cols, chars=4 if normalize else len(str(int(top))))
    show = geo["show_text"]
    fig = make_subplots(
        rows=geo["rows"],
        cols=cols,
        subplot_titles=geo["titles"],
        shared_yaxes=True,  # class names once, left of each row
        horizontal_spacing=geo["spacing"],
        vertical_spacing=geo["vertical_spacing"],
    )
    fig.update_annotations(font={"size": SUBTITLE_FONT})  # the subplot titles
    for k, name in enumerate(names):
        counts = np.asarray(mats[name], dtype=float)
        rates = row_normalise(counts)
        # one line per cell (the rate or the count; the hover gives both): half the text
        text = [
            [
                f"{rates[i, j]:.2f}" if normalize else f"{int(counts[i, j])}"
                for j in range(len(classes))
            ]
            for i in range(len(classes))
        ]
        fig.add_trace(
            go.Heatmap(
                z=rates if normalize else counts,
                x=list(classes),
                y=list(classes),
                coloraxis="coloraxis",
                text=text if show else None,
                texttemplate="%{text}" if show else None,
                textfont={"size": CELL_FONT},
                customdata=np.dstack([counts, rates]),
                hovertemplate=f"<b>{name}</b><br>true %{{y}}<br>predicted %{{x}}"
                "<br>count %{customdata[0]:.0f}<br>rate (of true row) %{customdata[1]:.3f}"
                "<extra></extra>",
                xgap=1,
                ygap=1,
            ),
            row=k // cols + 1,
            col=k % cols + 1,
        )
    fig.update_yaxes(autorange="reversed", type="category", **geo["yaxis"])
    fig.update_xaxes(type="category", **geo["xaxis"])
    for k in range(max(0, len(names) - cols), len(names)):  # (rows: true class, in the caption)
        fig.update_xaxes(title_text="predicted", row=k // cols + 1, col=k % cols + 1)
    fig.update_layout(
        coloraxis={
            "colorscale": SEQ_SCALE,
            "cmin": 0,
            "cmax": top,
            "colorbar": {"title": {"text": "rate" if normalize else "count"}, "thickness": 12},
        },
        margin=geo["margin"],
        height=geo["height"],
    )
    return fig


def confusion_difference(
    a: np.ndarray, b: np.ndarray, classes: Sequence[str], *, normalize: bool, names: tuple[str, str]
) -> go.Figure:
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


# --------------------------------------------------------------------------------------------
# Per-class metrics
# --------------------------------------------------------------------------------------------

METRIC_TITLES = {"precision": "Precision", "recall": "Recall", "f1": "F1"}


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
            if points is None or points.empty:
                continue
            pts = points[(points["group"] == g) & (points["metric"] == metric)]
            if pts.empty:
                continue
            pos = {c: xs[i] - span / 2 + (k + 0.5) * width for i, c in enumerate(classes)}
            fig.add_trace(
                go.Scatter(
                    x=[pos[c] for c in pts["class"]],
                    y=pts["value"],
                    mode="markers",
                    name=f"{g}: single seeds",
                    legendgroup=g,
                    showlegend=False,
                    marker={"color": "black", "size": 6, "symbol": "circle-open"},
                    customdata=np.stack([pts["class"], pts["seed"].astype(str)], axis=-1),
                    hovertemplate=f"{g}<br>seed %{{customdata[1]}}, %{{customdata[0]}}: "
                    "%{y:.3f}<extra></extra>",
                ),
                row=1,
                col=col,
            )
    fig.update_xaxes(tickvals=xs, ticktext=list(classes), range=[-0.5, len(classes) - 0.5])
    fig.update_layout(barmode="overlay", legend={"title": {"text": ""}})
    fig.update_yaxes(range=[0, 1.05], row=1, col=1, title_text="score")
    return _layout(fig, title, 430)


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
    return _layout(fig, title, 160 + 45 * max(1, sub["class"].nunique()))


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
    return _layout(fig, "Paired differences, B minus A", 160 + 50 * len(keys))


# --------------------------------------------------------------------------------------------
# Gradient conflict
# --------------------------------------------------------------------------------------------


def conflict_heatmap(m: np.ndarray, classes: Sequence[str], *, title: str) -> go.Figure:
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
    )


def conflict_difference(
    a: np.ndarray, b: np.ndarray, classes: Sequence[str], names: tuple[str, str], title: str
) -> go.Figure:
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
    )


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
    return _layout(fig, "Mean gradient conflict over training (band: ± std over class pairs)", 380)


def shares_heatmap(
    shares: np.ndarray, classes: Sequence[str], branch_names: Sequence[str], *, title: str
) -> go.Figure:
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


# --------------------------------------------------------------------------------------------
# Attention and geometry
# --------------------------------------------------------------------------------------------


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
    return _layout(fig, title, 120 + k * (60 + 28 * len(classes)))


def overlap_heatmap(
    m: np.ndarray, *, title: str, what: str, branch_names: Sequence[str] | None = None
) -> go.Figure:
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


def matrix_frame(m: np.ndarray, rows: Sequence[str], cols: Sequence[str]) -> pd.DataFrame:
    """A matrix as a labelled DataFrame (for CSV download)."""
    return pd.DataFrame(np.asarray(m, float), index=list(rows), columns=list(cols))


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


# --------------------------------------------------------------------------------------------
# Attributions
# --------------------------------------------------------------------------------------------


def _short(name: str, n: int = 6) -> str:
    """A tick label at most n characters long ('possi…'); the hover keeps the full name."""
    return name if len(name) <= n else name[: n - 1] + "…"


def _grid_parts(runs: Sequence[tuple[str, Mapping[str, Any], int]]):
    """What both attribution grids draw: the classes; per run its logits (rows = classes,
    columns = branches, or one column for class heads), column names and kind ('branch' or
    'head'); the largest |logit| of all runs (one symmetric scale); the most gated branches
    (0: no run has gates)."""
    classes = [str(c) for c in runs[0][1]["classes"]]
    logits = []
    for _, r, _ in runs:
        z = np.asarray(r["branch_logits"], float)
        if z.shape[1] == len(classes):  # branches: their logits for every class
            logits.append((z.T, [str(k + 1) for k in range(z.shape[0])], "branch"))
        else:  # one head per class, each giving its own class's logit
            logits.append((z, ["own"], "head"))
    top = max(float(np.abs(z).max()) for z, _, _ in logits) or 1.0
    branches = max(
        (r["attention"].shape[0] for _, r, _ in runs if r["attention"] is not None), default=0
    )
    return classes, logits, top, branches


def attribution_grid(runs: Sequence[tuple[str, Mapping[str, Any], int]]) -> go.Figure:
    """Every run's numbers for one image in one figure: one column per run (label, a
    csba.attributions report, the explained class), rows: probabilities (the explained class
    red), the logits each branch (or class head) adds, one row per class as in the bars, and,
    where any run has gates, its attention per branch and channel. One colour scale per row,
    shared by the runs so they compare. One chart for all runs: the browser lays out and draws a
    chart's frame once (five charts, one per run, were 40% of the page's drawing)."""
    classes, logits, top, branches = _grid_parts(runs)
    n = len(runs)
    gated = branches > 0
    plots = [26 * len(classes), 26 * len(classes)] + ([max(60, 22 * branches)] if gated else [])
    gap = 60  # px between rows: tick labels and the next row
    height = sum(plots) + gap * (len(plots) - 1) + 70
    fig = make_subplots(
        rows=len(plots),
        cols=n,
        row_heights=plots,
        column_titles=[label.replace(" (", "<br>(", 1) for label, _, _ in runs],  # 2 lines
        horizontal_spacing=min(0.04, 0.3 / max(1, n - 1)) if n > 1 else 0.0,
        vertical_spacing=gap / height,
    )
    for k, (label, r, target) in enumerate(runs, start=1):
        colours = ["#d62728" if i == target else "#1f77b4" for i in range(len(classes))]
        fig.add_trace(
            go.Bar(
                x=r["probs"],
                y=classes,
                orientation="h",
                marker_color=colours,
                text=[f"{p:.2f}" for p in r["probs"]],
                textposition="auto",
                hovertemplate=f"<b>{label}</b><br>%{{y}}: %{{x:.3f}}<extra></extra>",
                showlegend=False,
            ),
            row=1,
            col=k,
        )
        z, cols, kind = logits[k - 1]
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=cols,
                y=classes,
                coloraxis="coloraxis",
                text=[[f"{v:.1f}" for v in row] for row in z],
                texttemplate="%{text}",
                hovertemplate=f"<b>{label}</b><br>%{{y}}, {kind} %{{x}}: %{{z:.3f}}<extra></extra>",
            ),
            row=2,
            col=k,
        )
        fig.update_xaxes(
            type="category", title_text=f"{kind}es" if kind == "branch" else "heads", row=2, col=k
        )
        if r["attention"] is not None:
            names = [str(x) for x in r["branch_labels"]]  # "branch 1" ... or "head <class>"
            fig.add_trace(
                go.Heatmap(
                    z=np.asarray(r["attention"], float),
                    y=[_short(x.removeprefix("branch ").removeprefix("head ")) for x in names],
                    coloraxis="coloraxis2",
                    customdata=np.broadcast_to(
                        np.array(names, dtype=object)[:, None], np.shape(r["attention"])
                    ),
                    hovertemplate=f"<b>{label}</b><br>%{{customdata}}, channel %{{x}}: "
                    "%{z:.3f}<extra></extra>",
                ),
                row=3,
                col=k,
            )
            fig.update_xaxes(showticklabels=False, title_text="channel", row=3, col=k)
        elif gated:  # a run without gates: its attention cell says so
            fig.update_xaxes(visible=False, row=3, col=k)
            fig.update_yaxes(visible=False, row=3, col=k)
            cell = (len(plots) - 1) * n + k  # this cell's axes (hidden, so paper coordinates)
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

    def bar(row: int, title: str) -> dict:  # a colour bar beside its own row only
        lo, hi = fig.layout[f"yaxis{(row - 1) * n + 1}"].domain
        return {"title": {"text": title}, "thickness": 10, "y": (lo + hi) / 2, "len": hi - lo}

    fig.update_layout(
        coloraxis={
            "colorscale": "RdBu",
            "reversescale": True,
            "cmin": -top,
            "cmax": top,
            "colorbar": bar(2, "logit"),
        },
        height=height,
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
    )
    if gated:
        fig.update_layout(
            coloraxis2={"colorscale": "Viridis", "cmin": 0, "cmax": 1, "colorbar": bar(3, "gate")}
        )
    fig.update_yaxes(title_text="probability", row=1, col=1)
    fig.update_yaxes(title_text="logits", row=2, col=1)
    return fig


def attribution_grid_png(
    runs: Sequence[tuple[str, Mapping[str, Any], int]], dpi: int = 100
) -> bytes:
    """:func:`attribution_grid` drawn once on the server as a PNG (matplotlib, see
    :func:`attribution_grid_static`). The browser decodes one image instead of laying out a
    15-subplot plotly chart (about 40% of the Attributions page's browser time,
    benchmarks/bench_dashboard.py), so it is the page's default."""
    return png(attribution_grid_static(runs, dpi))


def attribution_grid_static(runs: Sequence[tuple[str, Mapping[str, Any], int]], dpi: int = 100):
    """:func:`attribution_grid` as a matplotlib Figure: the same rows and columns, each value
    printed in its cell, one logit colour scale for all runs (symmetric, the largest |logit|),
    gates on 0..1; no hover."""
    from matplotlib.figure import Figure  # no pyplot: no global state, safe in any thread

    classes, logits, top, branches = _grid_parts(runs)
    n, nc = len(runs), len(classes)
    gated = branches > 0
    heights = [0.3 * nc + 0.2, 0.3 * nc + 0.2] + ([max(0.7, 0.22 * branches)] if gated else [])
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
    small = {"fontsize": 8}
    logit_img = gate_img = None
    for k, (label, r, target) in enumerate(runs):
        ax = fig.add_subplot(grid[0, k])
        probs = np.asarray(r["probs"], float)
        colours = ["#d62728" if i == target else "#1f77b4" for i in range(nc)]
        ax.barh(range(nc), probs, color=colours)
        for i, p in enumerate(probs):  # inside a long bar, after a short one
            inside = p > 0.75
            ax.text(
                p - 0.02 if inside else p + 0.02,
                i,
                f"{p:.2f}",
                va="center",
                ha="right" if inside else "left",
                color="white" if inside else "black",
                **small,
            )
        ax.set_xlim(0, 1)
        ax.set_xticks([0, 0.5, 1], ["0", ".5", "1"])
        ax.set_ylim(nc - 0.5, -0.5)
        ax.set_yticks(range(nc), classes if k == 0 else [""] * nc, **small)
        ax.tick_params(labelsize=8)
        ax.set_title(label.replace(" (", "\n(", 1), fontsize=9)
        if k == 0:
            ax.set_ylabel("probability", fontsize=9)
        z, cols, kind = logits[k]
        ax = fig.add_subplot(grid[1, k])
        logit_img = ax.imshow(z, cmap="RdBu_r", vmin=-top, vmax=top, aspect="auto")
        for (i, j), v in np.ndenumerate(z):
            ax.text(
                j,
                i,
                f"{v:.1f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if abs(v) > 0.6 * top else "black",
            )
        ax.set_xticks(range(len(cols)), cols, fontsize=8)
        ax.set_yticks(range(nc), classes if k == 0 else [""] * nc, fontsize=8)
        ax.set_xlabel(f"{kind}es" if kind == "branch" else "heads", fontsize=8)
        if k == 0:
            ax.set_ylabel("logits", fontsize=9)
        if gated:
            ax = fig.add_subplot(grid[2, k])
            if r["attention"] is None:
                ax.axis("off")
                ax.text(
                    0.5, 0.5, "no gates", ha="center", va="center", transform=ax.transAxes, **small
                )
                continue
            a = np.asarray(r["attention"], float)
            gate_img = ax.imshow(
                a, cmap="viridis", vmin=0, vmax=1, aspect="auto", interpolation="nearest"
            )
            names = [
                str(x).removeprefix("branch ").removeprefix("head ") for x in r["branch_labels"]
            ]
            ax.set_yticks(range(len(names)), [_short(x) for x in names], fontsize=7)
            ax.set_xticks([])
            ax.set_xlabel("channel", fontsize=8)
    fig.colorbar(logit_img, cax=fig.add_subplot(grid[1, n])).ax.tick_params(labelsize=7)
    if gate_img is not None:
        fig.colorbar(gate_img, cax=fig.add_subplot(grid[2, n])).ax.tick_params(labelsize=7)
    return fig
