"""A guard against regrowth: no new function over 80 lines, and the long ones of today only shrink.

Parses ``csba/``, ``pages/`` and ``app.py`` (every function and method, nested ones too, by
``path::qualified.name``; length = ``def`` line to last line, decorators not counted). A function
longer than ``MAX_LINES`` must be listed in ``tests/function_lengths.json`` with its length, and
may not grow past it; when one shrinks (or goes, or gets under the limit) the list must be
updated, so it never hides room to grow again:

    python tests/test_function_length.py --update
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ALLOW = Path(__file__).with_name("function_lengths.json")
MAX_LINES = 80
SOURCES = ("csba", "pages", "app.py")


def _files() -> list[Path]:
    out = []
    for name in SOURCES:
        p = REPO / name
        out += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    return out


def lengths_of(rel: str, source: str) -> dict[str, int]:
    """``{"<rel>::<qualified name>": lines}`` of every function in ``source``."""
    lengths: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    key = f"{rel}::{name}"
                    n = child.end_lineno - child.lineno + 1
                    lengths[key] = max(n, lengths.get(key, 0))  # same name twice: the longest
                visit(child, f"{name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(source, filename=rel), "")
    return lengths


def function_lengths() -> dict[str, int]:
    """Every function of csba/, pages/ and app.py: ``{"pages/f1.py::main": 152, ...}``."""
    out: dict[str, int] = {}
    for path in _files():
        out |= lengths_of(path.relative_to(REPO).as_posix(), path.read_text())
    return out


def long_functions() -> dict[str, int]:
    return {k: n for k, n in sorted(function_lengths().items()) if n > MAX_LINES}


def test_no_function_grows_and_no_new_one_is_long():
    allowed = json.loads(ALLOW.read_text())
    now = long_functions()
    new = [f"{k}: {n} lines" for k, n in now.items() if k not in allowed]
    grew = [
        f"{k}: {n} lines, allowed {allowed[k]}" for k, n in now.items() if n > allowed.get(k, n)
    ]
    assert not new, f"new functions over {MAX_LINES} lines (split them):\n" + "\n".join(new)
    assert not grew, "long functions that grew (split them):\n" + "\n".join(grew)


def test_the_allow_list_is_current():
    """A listed function that shrank, went or got under the limit is listed at its new length
    (or not at all), so the list never leaves room to grow back."""
    allowed = json.loads(ALLOW.read_text())
    now = long_functions()
    stale = [
        f"{k}: listed {n}, now {now.get(k, f'at most {MAX_LINES}')}"
        for k, n in allowed.items()
        if now.get(k, 0) < n
    ]
    assert not stale, (
        "functions shrank or went: run python tests/test_function_length.py --update\n"
        + "\n".join(stale)
    )


def test_the_guard_measures_what_it_says():
    """Known answer: decorators not counted, nested functions and methods named by their path."""
    src = (
        "@dec\n"  # 1
        "def f():\n"  # 2
        "    def g():\n"  # 3
        "        return 1\n"  # 4
        "    return g\n"  # 5
        "\n"
        "class A:\n"  # 7
        "    async def m(self):\n"  # 8
        "        pass\n"  # 9
    )
    assert lengths_of("x.py", src) == {"x.py::f": 4, "x.py::f.g": 2, "x.py::A.m": 2}


if __name__ == "__main__":
    if sys.argv[1:] == ["--update"]:
        ALLOW.write_text(json.dumps(long_functions(), indent=1) + "\n")
        print(f"{ALLOW}: {len(long_functions())} functions over {MAX_LINES} lines")
    else:
        print(json.dumps(long_functions(), indent=1))
