"""The dashboard's defaults reproduce docs/results.md on the shipped runs.

A researcher who opens a page with its defaults reads the same numbers as in the docs: the
Per-class F1 page's seed-mean intervals (same resamples, seed and seed groups as ``report``)
and the conflict-vs-gain tab's sentence and global line, at the image size the docs report.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import open_page

REPO = Path(__file__).resolve().parents[1]
RESULTS = (REPO / "docs" / "results.md").read_text()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (REPO / "checkpoints" / "elpv").is_dir(), reason="needs the shipped runs"
    ),
]


def _variants_table() -> dict[str, dict[str, str]]:
    """method -> {"accuracy", "macro-F1"} cells of docs/results.md's variants table."""
    lines = RESULTS.split("| variant | parameters | seeds | accuracy | macro-F1 |", 1)[1]
    rows = {}
    for line in lines.splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = {"accuracy": cells[3], "macro-F1": cells[4]}
    return rows


def _interval(cell: str) -> str:
    return re.search(r"\[[^\]]+\]", cell).group(0)


def _page_name(method: str) -> str:
    """The page's seed-group label of a docs method name (``csba-resnet18``)."""
    variant, _, backbone = method.partition("-")
    where = f"{backbone}, 128px" if backbone else "128px"
    return f"{variant} ({where}; mean of 3 seeds)"


@pytest.fixture
def shipped(monkeypatch):
    monkeypatch.setenv("CSBA_RUNS_ROOT", str(REPO / "checkpoints"))
    monkeypatch.delenv("CSBA_DATA_ROOT", raising=False)
    monkeypatch.chdir(REPO)
    monkeypatch.syspath_prepend(str(REPO))


def test_per_class_f1_defaults_give_the_docs_intervals(shipped):
    at = open_page("pages/f1.py", timeout=300)
    overall = at.dataframe[0].value.set_index("variant / run")
    docs = _variants_table()
    assert len(docs) == 12 and len(overall) == 12, overall.index.tolist()
    for method, cells in docs.items():
        row = overall.loc[_page_name(method)]
        for metric in ("accuracy", "macro-F1"):
            assert _interval(row[metric]) == _interval(cells[metric]), (method, metric)


def test_gain_tab_defaults_say_what_the_docs_say(shipped):
    at = open_page("pages/conflict.py", timeout=300)
    at.session_state["gcm_section"] = "Conflict vs minority gain"
    at.run()
    assert at.selectbox(key="gain_size").value == 128
    docs_line = next(line for line in RESULTS.splitlines() if line.startswith("**trifire.**"))
    assert "Global: rho" in docs_line
    assert docs_line in [m.value for m in at.markdown]
