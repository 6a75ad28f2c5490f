"""Progress bars on stderr (tqdm) for long library calls: evaluate, diagnose, compare, protocol.

Bars never touch stdout, so ``--json`` output stays one document; ``TQDM_DISABLE=1`` in the
environment turns every bar off (tqdm's own variable, honoured here although the callers pass
``disable`` explicitly).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

from tqdm import tqdm

__all__ = ["progress_bar"]


def progress_bar(
    iterable: Iterable | None = None,
    *,
    desc: str | None = None,
    total: int | None = None,
    unit: str = "it",
    enabled: bool = True,
    leave: bool = False,
) -> tqdm:
    """A tqdm bar on stderr; ``enabled=False`` (or TQDM_DISABLE=1) makes it a silent no-op."""
    off = os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")
    return tqdm(
        iterable,
        desc=desc,
        total=total,
        unit=unit,
        file=sys.stderr,
        leave=leave,
        disable=off or not enabled,
    )
