"""What every figure module of the dashboard shares (no Streamlit here).

Colour scales, the layout assumptions (the px a page gives a chart), plotly's default template
(set on import: every figure made after it takes it), number formatting and JSON-to-array
helpers the pages use too, and the building blocks of the figures: tick labels that fit, the
annotated class-matrix heatmap (:func:`matrix_heatmap`), a matplotlib figure's PNG bytes.

The figures themselves live by page family: :mod:`pages.fig_runs`, :mod:`pages.fig_confusion`,
:mod:`pages.fig_per_class`, :mod:`pages.fig_conflict`, :mod:`pages.fig_attention`,
:mod:`pages.fig_attributions`.
"""

from __future__ import annotations

import io
import math
import re
import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

__all__ = [
    "CELL_FONT",
    "CHAR_EM",
    "COLORBAR_PX",
    "CONFLICT_SCALE",
    "DIFF_SCALE",
    "DIFF_WIDTH",
    "FONT",
    "HALF_WIDTH",
    "HEATMAP_WIDTH",
    "LABEL_CHARS",
    "LINE_EM",
    "MAX_HEIGHT",
    "PAGE_WIDTH",
    "PALETTE",
    "SEQ_SCALE",
    "SUBTITLE_FONT",
    "TICK_FONT",
    "TITLE_FONT",
    "add_grid_heatmap",
    "as_array",
    "as_matrix",
    "category_ticks",
    "clickable_cells",
    "clip_label",
    "finish_grid",
    "finish_layout",
    "fmt_ci",
    "grid_layout",
    "heatmap_grid",
    "heatmap_layout",
    "matrix_frame",
    "matrix_heatmap",
    "mpl_colour",
    "number",
    "png",
    "short_labels",
    "text_px",
    "wrap",
]

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
    """``x`` as a float, or NaN where ``float()`` refuses it (None, a list, words)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v


def fmt_ci(v: float, lo: float, hi: float, digits: int = 3, signed: bool = False) -> str:
    """'0.812 [0.790, 0.833]' (``signed``: '+0.012 [-0.004, +0.029]'); '-' for a missing value."""
    if not np.isfinite(v):
        return "-"
    s = "+" if signed else ""
    return f"{v:{s}.{digits}f} [{lo:{s}.{digits}f}, {hi:{s}.{digits}f}]"


def finish_layout(fig: go.Figure, title: str | None = None, height: int | None = None) -> go.Figure:
    """``fig`` with its title on the left, tight margins and ``height`` (px) when given."""
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
        out = [n if len(n) <= limit else clip_label(f"{k}.{n}", limit) for k, n in enumerate(names)]
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
    return clip_label(name, limit)


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


def grid_layout(titles: Sequence[str], classes: Sequence[str], cols: int, chars: int) -> dict:
    """A grid of heatmaps' layout (confusion, conflict) across PAGE_WIDTH px, ``cols``
    subplots per row: ``titles`` wrapped to a subplot's width at SUBTITLE_FONT (so neighbours
    never run into each other), the tick settings of :func:`category_ticks`, whether cell
    numbers of ``chars`` characters fit at CELL_FONT, the spacings (fractions of the plot
    area), margins and height (px)."""
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
        "cell_px": min(sub_w, per_row) / n,  # the side of the largest square in a cell
    }


def heatmap_grid(titles: Sequence[str], classes: Sequence[str], cols: int, chars: int):
    """An empty grid of square-class heatmaps laid out by :func:`grid_layout` (one subplot per
    title, class names once left of each row): returns (figure, layout)."""
    geo = grid_layout(titles, classes, cols, chars)
    fig = make_subplots(
        rows=geo["rows"],
        cols=cols,
        subplot_titles=geo["titles"],
        shared_yaxes=True,  # class names once, left of each row
        horizontal_spacing=geo["spacing"],
        vertical_spacing=geo["vertical_spacing"],
    )
    fig.update_annotations(font={"size": SUBTITLE_FONT})  # the subplot titles
    return fig, geo


def add_grid_heatmap(
    fig: go.Figure,
    geo: dict,
    k: int,
    cols: int,
    z: np.ndarray,
    classes: Sequence[str],
    *,
    text: Sequence[Sequence[str]],
    hover: str,
    customdata: np.ndarray | None = None,
) -> None:
    """Subplot k of a :func:`heatmap_grid`: the heatmap z (C, C) on the shared colour axis,
    ``text`` in the cells where they fit, and its click overlay tagged k."""
    where = {"row": k // cols + 1, "col": k % cols + 1}
    show = geo["show_text"]
    fig.add_trace(
        go.Heatmap(
            z=z,
            x=list(classes),
            y=list(classes),
            coloraxis="coloraxis",
            text=text if show else None,
            texttemplate="%{text}" if show else None,
            textfont={"size": CELL_FONT},
            customdata=customdata,
            hovertemplate=hover,
            xgap=1,
            ygap=1,
        ),
        **where,
    )
    clickable_cells(
        fig, classes, classes, z=z, hover=hover, customdata=customdata,
        cell_px=geo["cell_px"], tag=k, **where,
    )  # fmt: skip


def finish_grid(fig: go.Figure, geo: dict, coloraxis: dict) -> go.Figure:
    """A :func:`heatmap_grid`'s axes (first row at the top), colour axis, margins and height."""
    fig.update_yaxes(autorange="reversed", type="category", **geo["yaxis"])
    fig.update_xaxes(type="category", **geo["xaxis"])
    fig.update_layout(coloraxis=coloraxis, margin=geo["margin"], height=geo["height"])
    return fig


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
    click_tag: int | None = None,
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
    if click_tag is not None:
        cell = min(geo["cell"])
        clickable_cells(
            fig, x, y, z=z, hover=hover, cell_px=cell, tag=click_tag, customdata=customdata
        )
    return fig


CLICK_MAX_CELLS = 2_500  # above this (50 classes) no click overlay: the pickers choose a cell


def clickable_cells(
    fig: go.Figure,
    x: Sequence[str],
    y: Sequence[str],
    *,
    z: np.ndarray,
    hover: str,
    cell_px: float,
    tag: int = 0,
    customdata: np.ndarray | None = None,
    row: int | None = None,
    col: int | None = None,
) -> go.Figure:
    """Make a heatmap's cells clickable in Streamlit: plotly heatmaps send no selection event
    (streamlit issues 8760, 15042), scatter points do, so an invisible marker sits on the centre
    of each cell (len(y) x len(x); half of ``cell_px``, the cell's size as laid out, at most
    28 px); a click anywhere in a cell selects its marker (drawn as a ring) and the event's
    point carries ``customdata`` = [tag, row i, column j, z, *customdata[i, j]].
    ``hover`` is the heatmap's hovertemplate (%{z}, %{customdata[k]}), moved onto the markers
    since they are on top. Left out above CLICK_MAX_CELLS cells (the page's pickers remain)."""
    z = np.asarray(z, dtype=float)
    if z.size > CLICK_MAX_CELLS:
        return fig
    rows, cols = np.indices(z.shape)  # (R, C) each
    extra = np.zeros((*z.shape, 0)) if customdata is None else np.asarray(customdata, float)
    extra = extra.reshape((*z.shape, -1))
    data = np.concatenate(
        [np.full((*z.shape, 1), tag), rows[..., None], cols[..., None], z[..., None], extra], -1
    ).reshape(z.size, -1)
    template = re.sub(
        r"%\{customdata\[(\d+)\]", lambda m: f"%{{customdata[{int(m[1]) + 4}]", hover
    ).replace("%{z", "%{customdata[3]")
    fig.add_trace(
        go.Scatter(
            x=[str(x[j]) for j in cols.ravel()],
            y=[str(y[i]) for i in rows.ravel()],
            mode="markers",
            customdata=data,
            hovertemplate=template + ("" if "<extra>" in template else "<extra></extra>"),
            marker={
                "symbol": "square",
                "size": max(8.0, min(0.5 * cell_px, 28.0)),  # a ring in the chosen cell
                "color": "rgba(0,0,0,0)",
                "opacity": 0,
                "line": {"width": 3, "color": "#111"},
            },
            selected={"marker": {"opacity": 1}},
            unselected={"marker": {"opacity": 0}},
            showlegend=False,
        ),
        row=row,
        col=col,
    )
    # A click anywhere in a cell selects the nearest marker, its own (on a grid the nearest
    # centre is the cell's): no distance cutoff, since the page may draw cells larger than
    # the marker.
    fig.update_layout(hoverdistance=-1)
    return fig


def clip_label(name: str, n: int = 6) -> str:
    """A tick label at most n characters long ('possi…'); the hover keeps the full name."""
    return name if len(name) <= n else name[: n - 1] + "…"


def matrix_frame(m: np.ndarray, rows: Sequence[str], cols: Sequence[str]) -> pd.DataFrame:
    """A matrix as a labelled DataFrame (for CSV download)."""
    return pd.DataFrame(np.asarray(m, float), index=list(rows), columns=list(cols))


# --------------------------------------------------------------------------------------------
# matplotlib (pictures drawn once on the server)
# --------------------------------------------------------------------------------------------


def mpl_colour(c: str) -> tuple[float, ...]:
    """plotly's 'rgb(r, g, b)' as matplotlib's (r, g, b) in 0..1 (the same palette on both)."""
    return tuple(v / 255 for v in px.colors.unlabel_rgb(c))


def png(fig) -> bytes:
    """A matplotlib figure's PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
