"""CSBA Explorer dashboard: ``streamlit run app.py`` (docs/design.md §7).

The pages live in ``pages/`` and are wired here with ``st.navigation``; each page reads run
folders through ``pages.common`` (``$CSBA_RUNS_ROOT``, default ``checkpoints/``).
"""

import json
import os
import time

# OpenMP threads that spin while waiting make torch 70-90x slower when another process (a
# training run) holds the CPUs; passive waiting avoids it. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import importlib

import streamlit as st

# Modules the pages import, loaded once by one thread before any page runs. Each session runs
# its script in its own thread; when several sessions arrive at a cold server, Python 3.11's
# import-lock deadlock detection can hand one of them a half-initialised module ("cannot import
# name ... from pages.common"; seen with 4 browsers at once). st.cache_resource lets exactly one
# thread run this while the others wait for it.
WARM_IMPORTS = (
    "pages.common",
    "pages.figcache",
    "pages.fig_base",
    "pages.fig_attention",
    "pages.fig_attributions",
    "pages.fig_conflict",
    "pages.fig_confusion",
    "pages.fig_per_class",
    "pages.fig_runs",
    "pages.icons",
    "csba.attributions",
    "csba.conflict_gain",
    "csba.jobs",
    "csba.paired",
    "csba.report",
    "csba.stats",
    "csba.typicality",
    "csba.workqueue",
    "captum.attr",
    "torchvision.models",
)


@st.cache_resource(show_spinner="Loading the dashboard's modules...")
def _warm_imports() -> tuple[str, ...]:
    for name in WARM_IMPORTS:
        importlib.import_module(name)
    return WARM_IMPORTS


_warm_imports()

from pages.common import extra_runs_input  # noqa: E402 (after the one-thread import above)
from pages.icons import PAGE_ICON  # noqa: E402

st.set_page_config(
    page_title="CSBA Explorer",
    page_icon=PAGE_ICON,  # inline SVG: the browser fetches nothing (":material/hub:" asked gstatic)
    layout="wide",
    menu_items={"About": "CSBA Explorer: gradient conflict and class-specific branch attention."},
)

# Run labels in the sidebar's pickers wrap instead of being cut: Streamlit truncates a chip
# ("class_heads s0 (128..."), which hid the seed. A constant style sheet, no user data.
st.html(
    "<style>[data-testid='stMultiSelectTagsContainer'] [data-tag]{max-width:100%;height:auto}"
    "[data-testid='stMultiSelectTagsContainer'] [data-tag] span[title]{white-space:normal;"
    "overflow:visible;text-overflow:clip;overflow-wrap:anywhere}</style>"
)

PAGES = {
    "Results": [
        st.Page("pages/home.py", title="Runs", icon=":material/home:", default=True),
        st.Page("pages/confusion.py", title="Confusion matrices", icon=":material/grid_on:"),
        st.Page("pages/f1.py", title="Per-class F1", icon=":material/bar_chart:"),
        st.Page("pages/protocols.py", title="Protocols", icon=":material/compare_arrows:"),
    ],
    "Diagnostics": [
        st.Page("pages/conflict.py", title="Gradient conflict", icon=":material/swap_calls:"),
        st.Page("pages/attention.py", title="Attention", icon=":material/visibility:"),
        st.Page("pages/attributions.py", title="Attributions", icon=":material/image_search:"),
    ],
    "Experiments": [
        st.Page("pages/training.py", title="Training", icon=":material/model_training:"),
    ],
}

# CSBA_SCRIPT_LOG=FILE: one JSON line per script run (page, seconds, whether it ran to the end),
# appended; benchmarks/bench_dashboard.py reads it for the server's own script time per view.
SCRIPT_LOG = os.environ.get("CSBA_SCRIPT_LOG")

t0 = time.perf_counter()
page = st.navigation(PAGES)
finished = False
try:
    extra_runs_input()
    page.run()
    finished = True
finally:
    if SCRIPT_LOG:
        line = {"page": page.url_path or "home", "seconds": time.perf_counter() - t0}
        line |= {"finished": finished, "t": time.time()}
        with open(SCRIPT_LOG, "a") as fh:  # one short write per line: appends do not interleave
            fh.write(json.dumps(line) + "\n")
