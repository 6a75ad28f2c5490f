"""The dashboard's figure modules: builders imported by name (no run-time lookup), one shared
cache through ``@cached_figure`` (pages.figcache), every module of pages/ under 800 lines, and
``pages.figures`` re-exporting every builder of the family modules (pages/fig_*.py)."""

from __future__ import annotations

import ast
import importlib
import inspect
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = REPO / "pages"
MAX_LINES = 800
FAMILIES = sorted(p.stem for p in PAGES.glob("fig_*.py"))  # fig_base and the page families


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def test_the_family_modules_are_there():
    assert {"fig_base", "fig_runs", "fig_confusion", "fig_conflict", "fig_attributions"} <= set(
        FAMILIES
    )


# --------------------------------------------------------------------------------------------
# (a) no run-time lookup of figures
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(PAGES.glob("*.py")), ids=lambda p: p.name)
def test_no_page_looks_figures_up_at_run_time(path):
    """No ``FIG.<name>`` (the old ``__getattr__`` registry) and no ``import pages.figures``
    (the uncached namespace) in a page: builders come from their family module, by name."""
    tree = _tree(path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            assert node.id != "FIG", f"{path.name}:{node.lineno} uses FIG"
        if isinstance(node, ast.alias):
            assert node.name != "FIG", f"{path.name} imports FIG"
        if isinstance(node, ast.FunctionDef):
            assert node.name != "__getattr__", f"{path.name}:{node.lineno} defines __getattr__"
        if path.name != "figures.py" and isinstance(node, ast.ImportFrom):
            names = {a.name for a in node.names}
            assert not (node.module == "pages" and "figures" in names), path.name
            assert node.module != "pages.figures", path.name


def test_every_name_a_page_imports_from_a_figure_module_exists():
    for path in PAGES.glob("*.py"):
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pages.fig"):
                mod = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(mod, alias.name), f"{path.name}: {node.module}.{alias.name}"


def test_common_keeps_no_figure_registry():
    from pages import common

    assert not hasattr(common, "FIG") and not hasattr(common, "_CachedFigures")
    assert "__getattr__" not in {
        n.name for n in ast.walk(_tree(PAGES / "common.py")) if isinstance(n, ast.FunctionDef)
    }


# --------------------------------------------------------------------------------------------
# (b) the shared cache
# --------------------------------------------------------------------------------------------


def test_a_cached_figure_is_built_once_per_arguments():
    from pages.common import FIGURE_BUILDS
    from pages.fig_conflict import conflict_heatmap

    m, classes = np.array([[1.0, -0.5], [-0.5, 1.0]]), ["a", "b"]
    title = f"t {uuid.uuid4()}"  # arguments no other test used: a miss first
    built = FIGURE_BUILDS["count"]
    fig = conflict_heatmap(m, classes, title=title)
    assert FIGURE_BUILDS["count"] == built + 1
    assert conflict_heatmap(m.copy(), list(classes), title=title) is fig  # equal arguments
    assert FIGURE_BUILDS["count"] == built + 1
    other = conflict_heatmap(m, classes, title=title + " 2")  # different arguments
    assert FIGURE_BUILDS["count"] == built + 2 and other is not fig
    conflict_heatmap(-m, classes, title=title)  # a different array
    assert FIGURE_BUILDS["count"] == built + 3


def test_the_decorator_keeps_the_builder_and_shares_one_counter():
    from pages import figcache
    from pages.common import FIGURE_BUILDS

    assert figcache.FIGURE_BUILDS is FIGURE_BUILDS
    calls = []

    def builder(x, *, scale=1):
        """A builder."""
        calls.append(x)
        return {"x": x * scale}

    cached = figcache.cached_figure(builder)
    assert cached.__wrapped__ is builder and cached.__name__ == "builder"
    assert cached.__doc__ == "A builder."
    assert inspect.signature(cached) == inspect.signature(builder)
    key = str(uuid.uuid4())
    built = FIGURE_BUILDS["count"]
    assert cached(key) is cached(key) and calls == [key]
    assert cached(key, scale=2) == {"x": key * 2} and calls == [key, key]
    assert FIGURE_BUILDS["count"] == built + 2


def test_a_cached_builder_draws_what_the_plain_one_draws():
    from pages import figures as F
    from pages.fig_confusion import confusion_grid

    mats = {"a": np.array([[3.0, 1.0], [0.0, 2.0]]), "b": np.eye(2) * (1 + uuid.uuid4().int % 9)}
    cached = confusion_grid(mats, ["x", "y"], normalize=False)
    assert cached.to_json() == F.confusion_grid(mats, ["x", "y"], normalize=False).to_json()


# --------------------------------------------------------------------------------------------
# (c) module size
# --------------------------------------------------------------------------------------------


def test_every_module_of_pages_is_under_800_lines():
    long = {
        p.name: n for p in PAGES.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


# --------------------------------------------------------------------------------------------
# (d) pages.figures re-exports every builder
# --------------------------------------------------------------------------------------------


def _defined_here(mod) -> set[str]:
    """The public functions and classes ``mod`` defines (decorated ones included)."""
    return {
        name
        for name, obj in vars(mod).items()
        if not name.startswith("_")
        and (inspect.isfunction(obj) or inspect.isclass(obj))
        and inspect.unwrap(obj).__module__ == mod.__name__
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_figures_re_exports_every_public_name_of_the_family_modules(family):
    from pages import figures as F

    mod = importlib.import_module(f"pages.{family}")
    assert _defined_here(mod) <= set(mod.__all__), "a public function missing from __all__"
    for name in mod.__all__:
        assert name in F.__all__ and hasattr(F, name), f"pages.figures lacks {family}.{name}"
        ours, theirs = getattr(F, name), getattr(mod, name)
        if callable(theirs):  # the same builder; pages.figures' one uncached
            assert ours is inspect.unwrap(theirs), name
            assert not hasattr(ours, "__wrapped__"), name
        else:
            assert ours is theirs, name


def test_figures_names_only_what_it_has():
    from pages import figures as F

    assert len(F.__all__) == len(set(F.__all__))
    assert all(hasattr(F, name) for name in F.__all__)


# --------------------------------------------------------------------------------------------
# the twins share their data
# --------------------------------------------------------------------------------------------


def test_the_class_distribution_twins_draw_the_shared_bars():
    from pages import figures as F

    meta = {"classes": ["a", "b"], "dataset": {"counts": {"train": [90, 10], "val": [9, 1]}}}
    dist = F.class_distribution(meta)
    classes, bars = F.distribution_bars(dist)
    assert classes == ["a", "b"] and [s for s, _, _ in bars] == list(F.SPLITS)
    fig = F.class_distribution_figure(dist, "t")
    for trace, (split, counts, colour) in zip(fig.data, bars, strict=True):
        assert trace.name == split and trace.marker.color == colour
        assert list(trace.x) == classes
        if split != "test":  # (the test counts are unknown here)
            assert list(trace.y) == list(counts)
    heights = [p.get_height() for p in F.class_distribution_static(dist, "t").axes[0].patches]
    want = [float(v) for _, counts, _ in bars for v in counts.astype(float).fillna(0)]
    assert heights == want == [90, 10, 9, 1, 0, 0]  # no test counts: drawn as 0
    assert pd.isna(bars[2][1]).all()


def test_the_attribution_grid_parts_are_what_both_grids_draw():
    from pages import figures as F

    report = {
        "classes": ["a", "b"],
        "probs": np.array([0.3, 0.7]),
        "branch_logits": np.array([[1.0, -3.0], [0.5, 2.0]]),  # (B, C): 2 branches
        "branch_labels": ["branch 1", "branch 2"],
        "attention": np.full((2, 4), 0.5),
    }
    parts = F.attribution_grid_parts([("run", report, 1)])
    (col,) = parts.columns
    assert parts.classes == ["a", "b"] and parts.top == 3.0 and parts.branches == 2
    np.testing.assert_allclose(col.logits, report["branch_logits"].T)  # rows: classes
    assert col.colours == ["#1f77b4", "#d62728"] and col.prob_text == ["0.30", "0.70"]
    assert col.logit_cols == ["1", "2"] and col.logit_title == "branches"
    assert col.gate_ticks == ["1", "2"] and col.gate_names == ["branch 1", "branch 2"]
    fig = F.attribution_grid([("run", report, 1)])
    assert list(fig.data[0].text) == col.prob_text
    assert [list(r) for r in fig.data[1].text] == col.logit_text
    static = F.attribution_grid_static([("run", report, 1)])
    texts = {t.get_text() for ax in static.axes for t in ax.texts}
    assert set(col.prob_text) | {v for row in col.logit_text for v in row} <= texts
