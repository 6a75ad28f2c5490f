"""Every table and figure builder of the dashboard in one namespace, uncached (no Streamlit use).

The builders live by page family and the pages import them from there (cached, see
:mod:`pages.figcache`):

* :mod:`pages.fig_base` - colour scales, layout sizes, plotly's template, number formatting,
  tick labels, :func:`matrix_heatmap`, PNG bytes;
* :mod:`pages.fig_runs` - the Runs table and class distribution;
* :mod:`pages.fig_confusion` - confusion matrices;
* :mod:`pages.fig_per_class` - per-class scores, paired differences (Per-class F1, Protocols);
* :mod:`pages.fig_conflict` - gradient conflict;
* :mod:`pages.fig_attention` - attention, branch overlap, class-mean angles;
* :mod:`pages.fig_attributions` - one image's numbers for every run.

This module re-exports all of them under their names, the cached ones as the plain builders
(``.__wrapped__``): ``from pages import figures as F; F.conflict_heatmap(...)`` builds a new
figure each call, as it always did here (scripts, tests). A page should import from the family
module instead, so its figures come from the shared cache.
"""

from __future__ import annotations

from csba.diagnostics import off_diagonal_stats
from csba.diagnostics import sorted_pairs as adversarial_pairs
from pages import (
    fig_attention,
    fig_attributions,
    fig_conflict,
    fig_confusion,
    fig_per_class,
    fig_runs,
)
from pages.fig_attributions import (
    GridColumn,
    GridParts,
    attribution_grid_parts,
    attribution_grid_static,
)
from pages.fig_base import (
    CELL_FONT,
    CHAR_EM,
    COLORBAR_PX,
    CONFLICT_SCALE,
    DIFF_SCALE,
    DIFF_WIDTH,
    FONT,
    HALF_WIDTH,
    HEATMAP_WIDTH,
    LABEL_CHARS,
    LINE_EM,
    MAX_HEIGHT,
    PAGE_WIDTH,
    PALETTE,
    SEQ_SCALE,
    SUBTITLE_FONT,
    TICK_FONT,
    TITLE_FONT,
    add_grid_heatmap,
    as_array,
    as_matrix,
    category_ticks,
    clickable_cells,
    clip_label,
    finish_grid,
    finish_layout,
    fmt_ci,
    grid_layout,
    heatmap_grid,
    heatmap_layout,
    matrix_frame,
    matrix_heatmap,
    mpl_colour,
    number,
    png,
    short_labels,
    text_px,
    wrap,
)
from pages.fig_confusion import confusion_long, confusion_of, row_normalise
from pages.fig_per_class import METRIC_TITLES
from pages.fig_runs import (
    SPLITS,
    class_distribution,
    class_distribution_static,
    distribution_bars,
    minority_class,
    runs_table,
)

# The cached builders, uncached (see the module's docstring)
class_distribution_figure = fig_runs.class_distribution_figure.__wrapped__
class_distribution_png = fig_runs.class_distribution_png.__wrapped__
confusion_grid = fig_confusion.confusion_grid.__wrapped__
confusion_difference = fig_confusion.confusion_difference.__wrapped__
per_class_bars = fig_per_class.per_class_bars.__wrapped__
delta_forest = fig_per_class.delta_forest.__wrapped__
paired_differences = fig_per_class.paired_differences.__wrapped__
conflict_heatmap = fig_conflict.conflict_heatmap.__wrapped__
conflict_difference = fig_conflict.conflict_difference.__wrapped__
conflict_history_figure = fig_conflict.conflict_history_figure.__wrapped__
shares_heatmap = fig_conflict.shares_heatmap.__wrapped__
conflict_gain_scatter = fig_conflict.conflict_gain_scatter.__wrapped__
conflict_grid = fig_conflict.conflict_grid.__wrapped__
attention_heatmaps = fig_attention.attention_heatmaps.__wrapped__
overlap_heatmap = fig_attention.overlap_heatmap.__wrapped__
angle_heatmap = fig_attention.angle_heatmap.__wrapped__
attribution_grid = fig_attributions.attribution_grid.__wrapped__
attribution_grid_png = fig_attributions.attribution_grid_png.__wrapped__

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
    "METRIC_TITLES",
    "PAGE_WIDTH",
    "PALETTE",
    "SEQ_SCALE",
    "SPLITS",
    "SUBTITLE_FONT",
    "TICK_FONT",
    "TITLE_FONT",
    "GridColumn",
    "GridParts",
    "add_grid_heatmap",
    "adversarial_pairs",
    "angle_heatmap",
    "as_array",
    "as_matrix",
    "attention_heatmaps",
    "attribution_grid",
    "attribution_grid_parts",
    "attribution_grid_png",
    "attribution_grid_static",
    "category_ticks",
    "class_distribution",
    "class_distribution_figure",
    "class_distribution_png",
    "class_distribution_static",
    "clickable_cells",
    "clip_label",
    "conflict_difference",
    "conflict_gain_scatter",
    "conflict_grid",
    "conflict_heatmap",
    "conflict_history_figure",
    "confusion_difference",
    "confusion_grid",
    "confusion_long",
    "confusion_of",
    "delta_forest",
    "distribution_bars",
    "finish_grid",
    "finish_layout",
    "fmt_ci",
    "grid_layout",
    "heatmap_grid",
    "heatmap_layout",
    "matrix_frame",
    "matrix_heatmap",
    "minority_class",
    "mpl_colour",
    "number",
    "off_diagonal_stats",
    "overlap_heatmap",
    "paired_differences",
    "per_class_bars",
    "png",
    "row_normalise",
    "runs_table",
    "shares_heatmap",
    "short_labels",
    "text_px",
    "wrap",
]
