"""Copy finished runs into checkpoints/ as run records: run.json and the training log, no weights.

    python benchmarks/ship_records.py SRC_ROOT [DEST_ROOT=checkpoints] [--dry-run]

SRC_ROOT is a protocol's ``--out`` folder (``<dataset>/<run>/run.json`` and ``logs/``). Every
run there that is completed and diagnosed, and not already under DEST_ROOT with weights, is
copied as ``DEST_ROOT/<dataset>/<run>/run.json`` (atomically) plus its log
``DEST_ROOT/logs/<dataset>-<run>.log``; its weights, typicality reference and resume state stay
behind, so ``checkpoints/`` keeps its size cap. Every dashboard page but Attributions reads such
a record, and ``report`` includes it. Unfinished or undiagnosed runs are listed and skipped. The
stored conflict changes under DEST_ROOT are then refreshed: a run's matched baseline may live
there rather than beside it in SRC_ROOT.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from csba.diagnostics.run import refresh_conflict_changes
from csba.store import META, WEIGHTS, atomic_write_json, list_runs


def _without_change(meta: dict) -> dict:
    # diagnostics.conflict_change depends on which baselines sit beside the run, not on the run
    diag = {k: v for k, v in (meta.get("diagnostics") or {}).items() if k != "conflict_change"}
    return {**meta, "diagnostics": diag}


def _same_record(target: Path, meta: dict) -> bool:
    """Whether ``target`` holds this very run already (a rerun ships nothing new)."""
    try:
        shipped = json.loads((target / META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return _without_change(shipped) == _without_change(meta)


def ship(src: Path, dest: Path, dry_run: bool = False) -> tuple[list[str], list[str]]:
    """Copy the finished runs of ``src`` into ``dest``; returns (shipped, skipped with reason)."""
    shipped, skipped = [], []
    for info in list_runs(src):
        rel = info.path.relative_to(src)
        name = f"{rel.parent.name}/{rel.name}"
        if info.meta is None:
            skipped.append(f"{name}: {info.error}")
            continue
        if info.meta.get("status") != "completed" or "diagnostics" not in info.meta:
            skipped.append(f"{name}: not completed and diagnosed yet")
            continue
        target = dest / rel
        if (target / WEIGHTS).is_file():
            skipped.append(f"{name}: shipped with its weights already")
            continue
        if _same_record(target, info.meta):
            skipped.append(f"{name}: shipped already, unchanged")
            continue
        shipped.append(name)
        if dry_run:
            continue
        target.mkdir(parents=True, exist_ok=True)
        atomic_write_json(target / META, info.meta)
        log = src / "logs" / f"{rel.parent.name}-{rel.name}.log"
        if log.is_file():
            (dest / "logs").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log, dest / "logs" / log.name)
    if shipped and not dry_run:
        refresh_conflict_changes(dest)
    return shipped, skipped


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("src", type=Path)
    ap.add_argument("dest", type=Path, nargs="?", default=Path("checkpoints"))
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)
    shipped, skipped = ship(args.src, args.dest, args.dry_run)
    print(f"shipped {len(shipped)} record(s): {', '.join(shipped) or '-'}")
    for line in skipped:
        print(f"  skipped {line}")


if __name__ == "__main__":
    main()
