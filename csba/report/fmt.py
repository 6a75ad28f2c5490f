"""Number and table formatting shared by the terminal tables and the Markdown sections."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from .. import stats

_METRIC_LABELS = {
    "accuracy": "accuracy",
    "macro_f1": "macro-F1",
    "balanced_accuracy": "balanced acc.",
    "precision": "precision",
    "recall": "recall",
    "f1": "F1",
}


def _fmt(x: Any, digits: int = 3, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)) or x is pd.NA:
        return "-"
    return f"{float(x):+.{digits}f}" if signed else f"{float(x):.{digits}f}"


def _fmt_ci(v: float, lo: float, hi: float, digits: int = 3, signed: bool = False) -> str:
    """``0.520 [0.410, 0.630]``: a value and its interval."""
    return f"{_fmt(v, digits, signed)} [{_fmt(lo, digits, signed)}, {_fmt(hi, digits, signed)}]"


def _text_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Aligned plain-text table: text columns left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(x) for x in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def is_text(i: int) -> bool:
        # A column is text when any body cell does not start like a number.
        for row in cells[1:]:
            s = row[i].lstrip("+-")
            if s and s != "-" and not s[:1].isdigit():
                return True
        return False

    left = [is_text(i) for i in range(len(headers))]
    lines = []
    for k, row in enumerate(cells):
        parts = [
            row[i].ljust(widths[i]) if left[i] else row[i].rjust(widths[i])
            for i in range(len(headers))
        ]
        lines.append("  ".join(parts).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _int_or_dash(x: Any, thousands: bool = False) -> str:
    if x is None or x is pd.NA or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{int(x):,}" if thousands else str(int(x))


def _md(text: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[bool]) -> str:
    lines = ["| " + " | ".join(_md(h) for h in headers) + " |"]
    lines.append("|" + "|".join("---:" if r else "---" for r in right) + "|")
    lines += ["| " + " | ".join(_md(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def _spread_cell(values: Sequence[float], ci: Sequence[float] | None, digits: int = 3) -> str:
    """``0.612 ± 0.020 [0.570, 0.650]`` (± only with several seeds, interval when given)."""
    agg = stats.aggregate_seeds(values)
    text = _fmt(agg["mean"], digits)
    if agg["n"] > 1:
        text += f" ± {_fmt(agg['std'], digits)}"
    if ci is not None:
        text += f" [{_fmt(ci[0], digits)}, {_fmt(ci[1], digits)}]"
    return text


def _params_cell(p: Any) -> str:
    if not isinstance(p, (int, float)) or isinstance(p, bool):
        return "-"
    return f"{int(p):,} ({p / 1e6:.2f}M)"
