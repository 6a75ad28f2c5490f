"""``python -m csba diagnose RUN_DIR``: diagnose a stored run and record it in its run.json.

The CLI (csba/cli.py) passes its ``load_run_and_data`` (run folder -> (Run, DatasetBundle)) and
JSON printer, so this module does not import the command line.
"""

from __future__ import annotations

import argparse
import math
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from .report import diagnose
from .training import conflict_change, generalisation_gap

__all__ = ["diagnose_run", "diagnose_run_cli"]

BATCH_SIZE = 64  # images per forward pass; the matrix does not depend on it


def _baseline_mean(run_path: Path, seed: int) -> float | None:
    """Mean conflict of the diagnosed baseline run with the same seed beside this run, if any."""
    from ..store import RunError, read_run_json

    try:
        meta = read_run_json(run_path.parent / f"baseline-s{seed}")
    except RunError:
        return None
    gcm = (meta.get("diagnostics") or {}).get("gcm") or {}
    return gcm.get("mean")


def diagnose_run(
    run_dir: str,
    load_run_and_data: Callable | None = None,
    *,
    data_root: str | None = None,
    split: str = "train",
    per_class: int | None = None,
    device: str | torch.device | None = None,
    store: bool = True,
) -> dict:
    """Diagnose a run on one split of its dataset; returns (and by default stores) the dict.

    The result is :func:`csba.diagnostics.diagnose`'s dict plus "split", "generalisation_gap"
    (val minus train loss at the kept epoch, from the run's history) and "conflict_change"
    (mean conflict minus that of the diagnosed ``baseline-s<seed>`` run beside it; None without
    one). ``per_class``: None or 0 for the whole split. Stored under "diagnostics" in run.json,
    and the run's typicality reference (:mod:`csba.typicality`) is written beside it.
    """
    from ..data import normalize
    from ..store import update_run_json

    if load_run_and_data is None:  # the CLI's loader: run + its dataset rebuilt from run.json
        from ..cli import load_run_and_data

    run, bundle = load_run_and_data(run_dir, data_root)
    images = bundle.split(split)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = run.model.to(device)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # No augmentation; the same order every call (diagnose makes two passes).
        for s in range(0, len(images), BATCH_SIZE):
            x = normalize(images.images[s : s + BATCH_SIZE], bundle.mean, bundle.std)
            yield x, images.labels[s : s + BATCH_SIZE]

    out = diagnose(
        model,
        batches,
        run.meta["num_classes"],
        class_names=run.classes,
        subset_per_class=per_class or None,
        seed=run.seed,
        batch_size=BATCH_SIZE,
    )
    out["split"] = split
    try:
        out["generalisation_gap"] = generalisation_gap(run.meta["history"], run.meta["best_epoch"])
    except (KeyError, TypeError, ValueError):
        out["generalisation_gap"] = None
    change = conflict_change(out["gcm"]["mean"], _baseline_mean(Path(run.path), run.seed))
    out["conflict_change"] = None if math.isnan(change) else change
    if store:
        update_run_json(run.path, diagnostics=out)
        from ..typicality import TypicalityError, ensure_typicality  # the run's OOD reference

        try:
            ensure_typicality(run.path, run=run, bundle=bundle, force=True)
        except TypicalityError as e:  # e.g. an empty validation split: diagnostics still stand
            warnings.warn(f"no typicality reference: {e}", stacklevel=2)
    return out


def refresh_conflict_changes(root: str | os.PathLike) -> list[Path]:
    """Recompute the stored ``diagnostics.conflict_change`` of every diagnosed run under ``root``.

    A run diagnosed before the ``baseline-s<seed>`` beside it (parallel protocol workers), or
    whose baseline was re-diagnosed later, holds a stale value; this rereads both stored means
    (no model is run) and rewrites only the run.json files whose value changes. Returns them.
    """
    from ..store import list_runs, update_run_json

    changed = []
    for info in list_runs(root):
        diag = (info.meta or {}).get("diagnostics")
        if not isinstance(diag, dict) or not isinstance(diag.get("gcm"), dict):
            continue
        seed = (info.meta.get("config") or {}).get("seed")
        base = _baseline_mean(Path(info.path), seed) if seed is not None else None
        value = conflict_change(diag["gcm"].get("mean"), base)
        value = None if math.isnan(value) else value
        if value != diag.get("conflict_change"):
            update_run_json(info.path, diagnostics={**diag, "conflict_change": value})
            changed.append(Path(info.path))
    return changed


def _print_text(out: dict, run_dir: str) -> None:
    gcm = out["gcm"]
    names = gcm["classes"]
    width = max(8, *(len(n) for n in names))

    def fmt(v: float | None) -> str:
        return "   nan" if v is None else f"{v:+.3f}"

    print(f"{run_dir}: gradient conflict on the {out['split']} split, counts {gcm['counts']}")
    print(" " * width + " " + " ".join(f"{n[:6]:>6}" for n in names))
    for name, row in zip(names, gcm["matrix"], strict=True):
        print(f"{name:>{width}} " + " ".join(fmt(v) for v in row))
    print(f"mean {fmt(gcm['mean'])}  std {fmt(gcm['std'])}")
    for p in gcm["most_adversarial"][:3]:
        print(f"  {p['classes'][0]} vs {p['classes'][1]}: {fmt(p['cos'])}")
    if out["layers"]:
        print(
            "per layer group mean: "
            + ", ".join(f"{g} {fmt(v['mean'])}" for g, v in out["layers"].items())
        )
    if out["branches"]:
        print("branch gradient shares (rows: classes):")
        for name, row in zip(names, out["branches"]["shares"], strict=True):
            print(
                f"  {name:>{width}} " + " ".join("  nan" if v is None else f"{v:.2f}" for v in row)
            )
    if out["attention"]:
        jac = out["attention"]["jaccard"]
        k = len(jac)
        pairs = [jac[a][b] for a in range(k) for b in range(a + 1, k) if jac[a][b] is not None]
        if pairs:
            print(f"attention top-10% Jaccard between branches: mean {sum(pairs) / len(pairs):.3f}")
    angles = out["class_angles"]
    if angles["mean"] is not None:
        print(f"class-mean angle of GAP(Z): mean {angles['mean']:.1f} degrees")
    if out["generalisation_gap"] is not None:
        gap = out["generalisation_gap"]
        print(f"generalisation gap (val - train loss at the kept epoch): {gap:.4f}")
    if out["conflict_change"] is not None:
        print(f"mean conflict change against the baseline: {out['conflict_change']:+.3f}")
    print(f"stored under 'diagnostics' in {Path(run_dir) / 'run.json'}")


def diagnose_run_cli(
    args: argparse.Namespace, load_run_and_data: Callable, print_json: Callable
) -> int:
    """Entry point of ``python -m csba diagnose`` (args: run_dir, data_root, split, per_class,
    json)."""
    per_class = getattr(args, "per_class", 0) or None
    if per_class is not None and per_class < 0:
        raise ValueError(f"--per-class must be 0 or more, got {per_class}")
    out = diagnose_run(
        args.run_dir,
        load_run_and_data,
        data_root=getattr(args, "data_root", None),
        split=getattr(args, "split", "train"),
        per_class=per_class,
    )
    if getattr(args, "json", False):
        print_json(out)
    else:
        _print_text(out, args.run_dir)
    return 0
