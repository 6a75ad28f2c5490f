"""The counts of shipped runs that the docs state are the counts on disk.

A shipped run is a folder under ``checkpoints/elpv`` with ``run.json`` and ``model.safetensors``;
a run record has ``run.json`` and no weights (``benchmarks/ship_records.py``). When a run or a
record is shipped, the README's sentence (and checkpoints/README.md's) must follow.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ELPV = REPO / "checkpoints" / "elpv"

pytestmark = pytest.mark.skipif(not ELPV.is_dir(), reason="needs the shipped runs")


def _text(name: str) -> str:
    """The file's text with whitespace collapsed, so that rewrapping a paragraph does not matter."""
    return " ".join((REPO / name).read_text(encoding="utf-8").split())


def _folders() -> list[Path]:
    return sorted(p for p in ELPV.iterdir() if (p / "run.json").is_file())


def _records() -> list[str]:
    return [p.name for p in _folders() if not (p / "model.safetensors").exists()]


def _with_weights() -> list[str]:
    return [p.name for p in _folders() if (p / "model.safetensors").exists()]


def _stated(text: str, pattern: str) -> list[int]:
    return [int(n) for n in re.findall(pattern, text)]


def test_counting_sees_both_kinds():
    # guards the counters themselves: a rename of run.json or the weights would make both 0
    assert _records() and _with_weights()
    assert not set(_records()) & set(_with_weights())


def test_readme_count_of_run_records_is_what_is_shipped():
    stated = _stated(_text("README.md"), r"\b(\d+) run records\b")
    assert stated, "README.md no longer states how many run records are shipped"
    assert stated == [len(_records())] * len(stated), (stated, _records())


def test_readme_count_of_runs_with_weights_is_what_is_shipped():
    stated = _stated(_text("README.md"), r"\((\d+) runs, each diagnosed")
    if not stated:
        pytest.skip("README.md does not state the number of shipped runs with weights")
    assert stated == [len(_with_weights())] * len(stated), (stated, _with_weights())


@pytest.mark.parametrize(
    ("pattern", "count"),
    [
        (r"All (\d+) are here", _records),
        (r"\((\d+) runs, [\d.]+ MB with their logs\)", _with_weights),
    ],
    ids=["records", "runs with weights"],
)
def test_checkpoints_readme_counts_are_what_is_shipped(pattern, count):
    stated = _stated(_text("checkpoints/README.md"), pattern)
    if not stated:
        pytest.skip(f"checkpoints/README.md does not state it ({pattern})")
    assert stated == [len(count())] * len(stated), (stated, count())


def test_performance_doc_is_short_and_leads_with_dated_figures():
    """docs/performance.md holds the current figures, not a notebook: at most 20,000 characters,
    opening with one table whose every row gives a command, a date and a machine."""
    text = (REPO / "docs" / "performance.md").read_text(encoding="utf-8")
    assert len(text) <= 20_000, len(text)
    first = text.split("## ", 2)[1]
    assert first.startswith("Figures at a glance"), first[:40]
    rows = [line for line in first.splitlines() if line.startswith("|")][2:]
    assert rows
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 5, row
        assert cells[2] and re.fullmatch(r"\d{4}-\d{2}-\d{2}", cells[3]) and cells[4], row
