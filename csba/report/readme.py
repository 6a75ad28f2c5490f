"""Writing the results: the whole section to docs/results.md, a short summary into the README."""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .markdown import _render
from .records import LEVEL
from .verdict import _bar_flags

RESULTS_START = "<!-- results:start -->"
RESULTS_END = "<!-- results:end -->"


def replace_between_markers(text: str, body: str) -> str:
    """Put ``body`` between the results markers of ``text`` (appended at the end if absent).

    Only the text strictly between the markers changes; a lone or misordered marker is an
    error rather than a guess, so a hand-edited README is never mangled.
    """
    n_start, n_end = text.count(RESULTS_START), text.count(RESULTS_END)
    block = f"{RESULTS_START}\n{body.strip(chr(10))}\n{RESULTS_END}"
    if n_start == 0 and n_end == 0:
        head = text.rstrip("\n")
        return (head + "\n\n" if head else "") + block + "\n"
    if n_start != 1 or n_end != 1:
        raise ValueError(
            f"the README must hold exactly one '{RESULTS_START}' and one '{RESULTS_END}' "
            f"(found {n_start} and {n_end})"
        )
    i, j = text.index(RESULTS_START), text.index(RESULTS_END)
    if j < i:
        raise ValueError(f"'{RESULTS_END}' comes before '{RESULTS_START}' in the README")
    return text[:i] + block + text[j + len(RESULTS_END) :]


RESULTS_FILE = Path("docs") / "results.md"  # the whole section, next to the README
SUMMARY_LIMIT = 2500  # characters the README summary should stay under (the README's budget)


def default_results_path(readme_path: str | os.PathLike) -> Path:
    """Where the whole results section goes by default: ``docs/results.md`` beside the README."""
    return Path(readme_path).parent / RESULTS_FILE


def render_readme_summary(summary: Mapping[str, Any], link: str, command: str) -> str:
    """The README's short results block from the pieces :func:`write_results` computes.

    Holds the section's title, one line on the runs with a link to ``link`` (the whole results
    file), the verdict sentence(s), the shipping bar's line (when a bar is given) and the
    variants table; no markers.
    """
    lines = [
        summary["title"],
        "",
        f"{summary['intro']} Every table (per class, conflict, per run, branches): "
        f"[{link}]({link}), written with this summary by `{command}`.",
        "",
    ]
    for v in summary["verdicts"]:
        lines += [v, ""]
    if summary.get("bar"):
        lines += [summary["bar"], ""]
    lines.append(summary["variants"])
    return "\n".join(lines)


def _results_file_text(body: str) -> str:
    """The standalone results file: the section with its headings raised two levels."""
    out = []
    for line in body.split("\n"):
        if line.startswith("### ") or line.startswith("#### "):
            line = line[2:]
        out.append(line)
    return "\n".join(out).strip("\n") + "\n"


def _write_atomic(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` unless it already holds it; returns whether it changed.

    Atomic: a temporary file in the same folder, then rename (as run.json).
    """
    try:
        old = path.read_text(encoding="utf-8") if path.exists() else None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read '{path}' ({e})") from None
    if old == text:
        return False
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        raise ValueError(f"cannot write '{path}' ({e.strerror})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return True


def report_command(
    root: str | os.PathLike,
    readme_path: str | os.PathLike,
    dataset: str,
    image_size: int | None = None,
    bar: tuple[float, float] | None = None,
    results_path: str | os.PathLike | None = None,
) -> str:
    """The ``python -m csba report`` command line that writes these results (for the text)."""
    command = (
        f"python -m csba report {shlex.quote(str(root))} --readme "
        f"{shlex.quote(str(readme_path))} --dataset {dataset}"
    )
    if results_path is not None and Path(results_path) != default_results_path(readme_path):
        command += f" --results {shlex.quote(str(results_path))}"
    if image_size is not None:
        command += f" --image-size {int(image_size)}"
    return command + _bar_flags(bar)


def write_results(
    root: str | os.PathLike,
    readme_path: str | os.PathLike,
    dataset: str = "elpv",
    image_size: int | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = LEVEL,
    command: str | None = None,
    bar: tuple[float, float] | None = None,
    results_path: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Regenerate the results from the runs of ``dataset`` under ``root``: the whole section in
    ``results_path`` and a short summary in the README.

    The whole section (:func:`render_results_markdown`) holds, per variant, mean and seed
    spread of accuracy, macro-F1 and the minority class's F1 (fewest training images) with
    bootstrap intervals, the parameter count (Table 2), the paired macro-F1 difference against
    the baseline, per-class F1 (Table 7), mean/std conflict and the most adversarial pairs
    (Table 4), branch gradient shares (Table 5) and validation accuracy / generalisation gap /
    conflict change (Table 6) of diagnosed runs, the verdict on whether CSBA beats the baseline
    and, with ``bar``, the shipping bar with each run's status. It is written whole to
    ``results_path`` (default ``docs/results.md`` beside the README; its headings raised to
    ``#``/``##``). The README gets, between ``<!-- results:start -->`` and
    ``<!-- results:end -->`` (added at the end when absent; the README is created when
    missing), only :func:`render_readme_summary`: verdict, shipping bar, variants table and a
    link to the results file. Writing is atomic and a file that would not change is not
    rewritten. Returns the info dict of :func:`render_results_markdown` plus ``readme``,
    ``results``, ``changed`` (the README) and ``results_changed``.
    """
    readme = Path(readme_path)
    results = default_results_path(readme) if results_path is None else Path(results_path)
    for path in (readme, results):
        if path.exists() and not path.is_file():
            raise ValueError(f"'{path}' is not a file")
    if readme.resolve() == results.resolve():
        raise ValueError(f"the results file and the README are the same file ('{readme}')")
    if command is None:
        command = report_command(root, readme_path, dataset, image_size, bar, results_path)
    body, summary, info = _render(root, dataset, image_size, n_resamples, seed, level, command, bar)
    link = Path(os.path.relpath(results.resolve(), readme.resolve().parent)).as_posix()
    try:
        old = readme.read_text(encoding="utf-8") if readme.exists() else ""
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read '{readme}' ({e})") from None
    new = replace_between_markers(old, render_readme_summary(summary, link, command))
    results_changed = _write_atomic(results, _results_file_text(body))
    changed = _write_atomic(readme, new) if new != old else False
    return {
        "readme": str(readme),
        "results": str(results),
        "changed": changed,
        "results_changed": results_changed,
        **info,
    }


def write_readme_results(
    root: str | os.PathLike,
    readme_path: str | os.PathLike,
    dataset: str = "elpv",
    image_size: int | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = LEVEL,
    command: str | None = None,
    bar: tuple[float, float] | None = None,
    results_path: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """The former name of :func:`write_results` (same arguments and result)."""
    return write_results(
        root, readme_path, dataset, image_size, n_resamples, seed, level, command, bar,
        results_path,
    )  # fmt: skip
