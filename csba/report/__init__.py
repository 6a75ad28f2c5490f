"""Comparing stored runs, and the results section (docs/results.md plus a README summary).

Two entry points, both driven by run folders on disk (docs/design.md §5):

* :func:`compare_runs` (``python -m csba compare RUN_DIR ...``): the paper's per-class tables
  (Tables 7, 12, 13) with bootstrap 95% intervals, paired deltas against the first run, a
  summary, a seed-aggregated view and the most adversarial class pairs (Table 4) of diagnosed
  runs; as DataFrames, as one JSON document (:func:`format_comparison` for text), as CSV/LaTeX
  files (:func:`write_tables`) and as figures (:func:`write_figures`: PNG via matplotlib,
  self-contained HTML via plotly).
* :func:`write_results` (``python -m csba report ROOT --readme README.md``): the Markdown
  results section built from every run of one dataset under a folder
  (:func:`render_results_markdown`), written whole to ``docs/results.md``, and a short summary
  of it (verdict, variants table, shipping bar) written between ``<!-- results:start -->`` and
  ``<!-- results:end -->`` in the README.

Everything is computed from the test predictions stored in run.json (no model is rebuilt and no
data are read), so comparing runs takes well under a second per run. No Streamlit import here:
the dashboard pages call these functions and render the tables and figures themselves.

Modules: :mod:`.records` (loading runs), :mod:`.tables` (comparisons), :mod:`.figures`,
:mod:`.verdict` (verdict and shipping bar), :mod:`.markdown` (the whole results section) and
:mod:`.readme` (writing it).
"""

from .figures import confusion_figure, f1_bar_figure, write_figures
from .fmt import _text_table  # noqa: F401 (csba.paired)
from .markdown import render_results_markdown
from .readme import (
    RESULTS_END,
    RESULTS_START,
    render_readme_summary,
    replace_between_markers,
    write_readme_results,
    write_results,
)
from .records import (
    LEVEL,
    PROTOCOL_KEYS,
    TOP_PAIRS,
    RunRecord,
    _check_same_test_set,  # noqa: F401 (csba.paired)
    _select_runs,  # noqa: F401 (csba.paired)
    load_records,
    protocol_changes,
)
from .tables import OVERALL_LABEL, TABLE_NAMES, compare_runs, format_comparison, write_tables
from .verdict import shipping_bar_parts, shipping_bar_text

__all__ = [
    "LEVEL",
    "OVERALL_LABEL",
    "PROTOCOL_KEYS",
    "RESULTS_END",
    "RESULTS_START",
    "TABLE_NAMES",
    "TOP_PAIRS",
    "RunRecord",
    "compare_runs",
    "confusion_figure",
    "f1_bar_figure",
    "format_comparison",
    "load_records",
    "protocol_changes",
    "render_readme_summary",
    "render_results_markdown",
    "replace_between_markers",
    "shipping_bar_parts",
    "shipping_bar_text",
    "write_figures",
    "write_readme_results",
    "write_results",
    "write_tables",
]
