"""Layout of the dashboard's plotly figures at the widths the pages give them (pages.figures).

No browser draws them here: text widths are estimated from the figure's own fonts at about
0.6 em per character (7 px at 12 px), the same rule of thumb a reviewer would use, and compared
with the room the page's expected widths (F.HEATMAP_WIDTH, F.PAGE_WIDTH) leave.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from csba.data import ELPV_CLASSES
from pages import figures as F

PX_PER_CHAR_12 = 7.0  # px per character at a 12 px font (scaled for other sizes)
LONG_RUNS = [
    "class_heads s0 (resnet18, 128px)",
    "baseline s0 (128px)",
    "csba s1 (resnet18, 128px) [elpv-runs/csba-s1]",
    "gradnorm s2 (resnet18, 128px)",
    "class_heads s1 (resnet18, 224px)",
]
ELPV8 = [f"{c}-{t}" for c in ELPV_CLASSES for t in ("mono", "poly")]


def _px(text: str, size: float) -> float:
    """Estimated width (px) of one line of text at a font size (px)."""
    return len(text) * PX_PER_CHAR_12 * size / 12


def _matrix(n: int, seed: int = 0) -> np.ndarray:
    """A symmetric (n, n) matrix of cosines in [-1, 1] with ones on the diagonal."""
    a = np.random.default_rng(seed).uniform(-1, 1, (n, n))
    m = (a + a.T) / 2
    np.fill_diagonal(m, 1.0)
    return m


def _heatmaps(classes: list[str]) -> dict:
    """Every class-matrix heatmap builder of the pages, for these classes."""
    n = len(classes)
    m = _matrix(n)
    counts = np.abs(m) * 50
    branches = ["branch 1", "branch 2", "branch 3"]
    return {
        "conflict": F.conflict_heatmap(m, classes, title="class_heads s0 (resnet18, 128px)"),
        "conflict difference": F.conflict_difference(
            m, _matrix(n, 1), classes, ("csba s0", "baseline s0"), "csba s0 minus baseline s0"
        ),
        "shares": F.shares_heatmap(np.full((n, 3), 1 / 3), classes, branches, title="csba s0"),
        "overlap": F.overlap_heatmap(np.eye(3), title="csba s0: Jaccard", what="Jaccard"),
        "angles": F.angle_heatmap(np.abs(m) * 90, classes, title="csba s0", zmax=90),
        "confusion difference": F.confusion_difference(
            counts, counts.T, classes, normalize=True, names=("csba s0", "baseline s0")
        ),
        "matrix": F.matrix_heatmap(m, classes, classes, title="t", zmin=-1, zmax=1),
    }


def _y_label_px(axis) -> float:
    """Px the y tick labels take left of the plot (their longest, plus the tick padding)."""
    return max(_px(str(t), axis.tickfont.size or 13) for t in axis.ticktext) + 8


def _x_label_extent(axis) -> float:
    """Px the x tick labels take below the plot at their angle."""
    size = axis.tickfont.size or 13
    longest = max(_px(str(t), size) for t in axis.ticktext)
    a = math.radians(abs(axis.tickangle or 0))
    return longest * math.sin(a) + 1.3 * size * math.cos(a)


# --------------------------------------------------------------------------------------------
# 1. Conflict over training: the bands draw no markers
# --------------------------------------------------------------------------------------------


def test_conflict_history_bands_draw_no_markers():
    hist = {
        name: [{"epoch": e, "mean": 0.1 * e - k, "std": 0.05} for e in range(1, 4)]
        for k, name in enumerate(("csba s0", "baseline s0"))
    }
    fig = F.conflict_history_figure(hist)
    bands = [t for t in fig.data if t.showlegend is False]  # the ± std bands
    assert len(bands) == 2
    for t in bands:  # unset, plotly marks a trace of < 20 points (3 epochs: 6 points)
        assert t.mode is not None and "markers" not in t.mode, t.mode
    lines = [t for t in fig.data if t.showlegend is not False]
    assert [t.name for t in lines] == ["csba s0", "baseline s0"]


# --------------------------------------------------------------------------------------------
# 2. Heatmap numbers, class names and titles
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("classes", [list(ELPV_CLASSES), ELPV8, [f"c{i}" for i in range(20)]])
def test_heatmap_cell_numbers_are_legible(classes):
    for name, fig in _heatmaps(classes).items():
        for t in fig.data:
            assert "%{z" in t.hovertemplate, name  # the value is always in the hover
            if t.texttemplate:
                assert t.textfont.size >= 10, name


def test_heatmap_numbers_shown_in_big_cells_and_hidden_in_small_ones():
    four = _heatmaps(list(ELPV_CLASSES))
    for name in ("conflict", "angles", "conflict difference", "confusion difference"):
        assert four[name].data[0].texttemplate == "%{text}", name  # 4 classes: numbers shown
    assert four["angles"].data[0].text[0][1] == f"{np.abs(_matrix(4))[0, 1] * 90:.1f}"
    for name, fig in _heatmaps([f"class {i}" for i in range(20)]).items():
        if name in ("overlap", "shares"):  # 3 branches wide: their cells stay big
            continue
        h = fig.data[0]
        assert not h.texttemplate and h.text is None, name  # ~11 px cells: hover only
        assert "%{z" in h.hovertemplate, name


@pytest.mark.parametrize("classes", [list(ELPV_CLASSES), ELPV8, [f"class {i}" for i in range(20)]])
def test_heatmap_class_names_do_not_overlap(classes):
    fig = F.conflict_heatmap(_matrix(len(classes)), classes, title="csba s0 (resnet18, 128px)")
    h, xa, ya = fig.data[0], fig.layout.xaxis, fig.layout.yaxis
    assert list(h.x) == classes and list(h.y) == classes  # full names in the hover (%{x}, %{y})
    for axis in (xa, ya):
        assert len(set(axis.ticktext)) == len(axis.ticktext)  # shortened names stay distinct
        assert all(len(t) <= F.LABEL_CHARS for t in axis.ticktext)
    plot_w = F.HEATMAP_WIDTH - 20 - F.COLORBAR_PX - _y_label_px(ya)
    # px between neighbouring labels: a cell, times the labels skipped
    pitch = plot_w / len(classes) * len(classes) / len(xa.tickvals)
    size, angle = xa.tickfont.size, abs(xa.tickangle or 0)
    longest = max(_px(t, size) for t in xa.ticktext)
    if angle == 0:
        assert longest <= pitch  # level labels each within their cell
    else:  # tilted or vertical: neighbours a line apart at least
        assert pitch * math.sin(math.radians(angle)) >= 1.2 * size, (pitch, angle)
    row = fig.layout.height and plot_w / len(classes) * len(classes) / len(ya.tickvals)
    assert row >= 1.2 * ya.tickfont.size  # y labels a line apart at least
    for line in fig.layout.title.text.split("<br>"):
        assert _px(line, fig.layout.title.font.size) <= F.HEATMAP_WIDTH - 20


def test_long_class_names_are_shortened_distinctly():
    assert F.short_labels(["a", "bb"]) == ["a", "bb"]
    assert F.short_labels(ELPV_CLASSES) == ELPV_CLASSES  # ELPV's names fit whole
    short = F.short_labels(ELPV_CLASSES, limit=12)
    assert short[0] == "functional" and short[3] == "defective"  # short enough as they are
    assert short[1].startswith("possi") and short[2].startswith("likel")
    eight = F.short_labels(ELPV8)
    assert len(set(eight)) == 8 and all(len(s) <= F.LABEL_CHARS for s in eight)
    same = F.short_labels(["averyveryverylongname1", "averyveryverylongname2"])
    assert len(set(same)) == 2 and all(len(s) <= F.LABEL_CHARS for s in same)


def test_shares_heatmap_shortens_branch_names_of_class_heads():
    heads = [f"head {c}" for c in ELPV_CLASSES]
    fig = F.shares_heatmap(np.full((4, 4), 0.25), ELPV_CLASSES, heads, title="class_heads s0")
    xa = fig.layout.xaxis
    assert list(fig.data[0].x) == heads
    assert all(len(t) <= F.LABEL_CHARS for t in xa.ticktext) and len(set(xa.ticktext)) == 4
    assert xa.ticktext[0] == "functional"  # the 'head ' all share is left to the hover
    assert F.short_labels(["branch 1", "branch 2"]) == ["branch 1", "branch 2"]  # they fit
    eight = F.short_labels([f"head {c}" for c in ELPV8])
    assert eight == F.short_labels(ELPV8) and len(set(eight)) == 8


# --------------------------------------------------------------------------------------------
# 3. Class-angle heatmaps: square cells
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("names", ["class", "elpv"])
def test_angle_heatmap_cells_are_square(names):
    heights = []
    for n in (3, 4, 8, 12, 20):
        classes = [f"class {i}" for i in range(n)]
        if names == "elpv":  # long names first, then as many generic ones as needed
            classes = (ELPV8 + classes)[:n]
        fig = F.angle_heatmap(np.abs(_matrix(n)) * 90, classes, title="csba s0", zmax=90)
        lay = fig.layout
        assert lay.yaxis.scaleanchor == "x" and (lay.yaxis.scaleratio or 1) == 1
        cell_w = (F.HEATMAP_WIDTH - 20 - F.COLORBAR_PX - _y_label_px(lay.yaxis)) / n
        cell_h = (lay.height - lay.margin.t - lay.margin.b - _x_label_extent(lay.xaxis)) / n
        assert 0.8 <= cell_h / cell_w <= 1.25, (n, cell_w, cell_h)
        heights.append(lay.height)
    # at a fixed width square cells keep the plot about as tall as it is wide: the figure grows
    # with the classes only by the room their tilted labels take below it
    assert heights == sorted(heights) and heights[-1] > heights[0]


# --------------------------------------------------------------------------------------------
# 4. Confusion grid: subplot titles within their subplot
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("classes", [list(ELPV_CLASSES), ELPV8])
def test_confusion_grid_titles_do_not_run_into_each_other(classes):
    n = len(classes)
    mats = {name: np.full((n, n), 30.0) + 200 * np.eye(n) for name in LONG_RUNS}
    fig = F.confusion_grid(mats, classes, normalize=True, cols=3)
    lay = fig.layout
    titles = list(lay.annotations)
    assert len(titles) == 5
    paper_w = F.PAGE_WIDTH - 20 - F.COLORBAR_PX - _y_label_px(lay.yaxis)  # px of the subplots
    plot_h = lay.height - lay.margin.t - lay.margin.b
    lines = max(t.text.count("<br>") + 1 for t in titles)
    for k, t in enumerate(titles):
        size = t.font.size
        lo, hi = lay[f"xaxis{k + 1 if k else ''}"].domain
        for line in t.text.split("<br>"):
            assert _px(line, size) <= (hi - lo) * paper_w, (line, size)
        assert t.text.replace("<br>", " ").startswith(LONG_RUNS[k])
    # the second row's titles clear the first row's class names
    above, below = lay.xaxis.anchor, lay.xaxis4.anchor
    gap = lay[above.replace("y", "yaxis")].domain[0] - lay[below.replace("y", "yaxis")].domain[1]
    need = _x_label_extent(lay.xaxis) + lines * 1.2 * titles[0].font.size
    assert gap * plot_h >= need
    # the top margin holds the first row's titles
    assert lay.margin.t >= lines * 1.2 * titles[0].font.size


def test_confusion_grid_hides_numbers_in_small_cells():
    classes = [f"class {i}" for i in range(20)]
    fig = F.confusion_grid({"a": np.eye(20) * 5, "b": np.ones((20, 20))}, classes, normalize=True)
    for h in fig.data[::2]:  # the heatmaps (each followed by its click overlay)
        assert not h.texttemplate and "customdata[1]" in h.hovertemplate
    small = F.confusion_grid({"a": np.eye(2) * 5}, ["x", "y"], normalize=False, cols=1)
    assert small.data[0].texttemplate == "%{text}" and small.data[0].textfont.size >= 10


# --------------------------------------------------------------------------------------------
# 5. Runs table: the backbone
# --------------------------------------------------------------------------------------------


def test_runs_table_names_the_backbone_after_the_variant():
    def info(k, cfg):
        meta = {"variant": "csba", "config": cfg | {"seed": k}, "metrics": {"test": {}}}
        return SimpleNamespace(meta=meta, path=f"runs/r{k}")

    runs = [info(0, {"backbone": "resnet18"}), info(1, {}), info(2, {"backbone": None})]
    df = F.runs_table(runs)
    cols = list(df.columns)
    i = cols.index("variant")
    assert cols[i : i + 4] == ["variant", "head", "method", "backbone"]  # what a run combines
    assert list(df["backbone"]) == ["resnet18", "trifire", "trifire"]
    assert list(df["head"]) == ["csba"] * 3 and list(df["method"]) == ["weighted"] * 3
