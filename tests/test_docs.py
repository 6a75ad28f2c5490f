"""The documentation stands alone: every relative link resolves, the README is short and shows
the screenshot, and nothing in the repository points outside it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = ("design", "results", "experiments", "performance", "diagnostics", "reliability", "scale")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _markdown_files() -> list[Path]:
    return [
        REPO / "README.md",
        REPO / "checkpoints" / "README.md",
        *sorted((REPO / "docs").glob("*.md")),
    ]


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    heads = re.findall(r"^#+\s+(.*)$", path.read_text(encoding="utf-8"), flags=re.M)
    return {_slug(h) for h in heads}


def test_slug_known_answers():
    assert _slug("2. Training protocol") == "2-training-protocol"
    assert _slug("Results: ELPV at 128 px") == "results-elpv-at-128-px"
    assert _slug("`csba` and *the* CLI") == "csba-and-the-cli"


@pytest.mark.parametrize("name", DOCS)
def test_every_doc_exists(name):
    path = REPO / "docs" / f"{name}.md"
    assert path.is_file() and len(path.read_text(encoding="utf-8")) > 500, path


@pytest.mark.parametrize("md", _markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(md):
    broken = []
    for target in LINK.findall(md.read_text(encoding="utf-8")):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (md.parent / file_part).resolve() if file_part else md
        if not dest.exists() or (anchor and dest.suffix == ".md" and anchor not in _anchors(dest)):
            broken.append(target)
    assert broken == [], f"{md.relative_to(REPO)}: broken links {broken}"


def test_readme_is_short_and_shows_the_screenshot():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text) <= 12_000, len(text)
    assert "](docs/screenshot.png)" in text
    png = REPO / "docs" / "screenshot.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 400_000
    assert "python benchmarks/screenshot.py" in text  # how to regenerate it


def test_readme_test_command_is_what_ci_runs():
    ci_last = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1].strip()
    assert ci_last in (REPO / "README.md").read_text(encoding="utf-8")


def test_nothing_refers_outside_the_repository():
    files = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    needle = "../" + "shared"  # split, so this file does not match itself
    offenders = []
    for name in files:
        path = REPO / name
        if not path.is_file() or path.suffix in {".png", ".safetensors", ".tgz", ".gz"}:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        if needle in text:
            offenders.append(name)
    assert offenders == []
