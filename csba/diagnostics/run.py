"""Diagnose a stored run and record it in its run.json (``python -m csba diagnose RUN_DIR``).

The run and its dataset come from :func:`csba.runs.load_run_and_data` unless a caller passes
its own loader (run folder, data root -> (Run, DatasetBundle)).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from ..conflict_gain import baselines_by_key, match_key
from ..progress import progress_bar
from .report import diagnose
from .training import conflict_change, generalisation_gap

__all__ = ["diagnose_run", "refresh_conflict_changes"]

BATCH_SIZE = 64  # images per forward pass; the matrix does not depend on it


def _baseline_means(metas) -> dict[tuple, float | None]:
    """Stored mean conflict of every baseline run among ``metas`` (run.json dicts), by
    ``match_key``: a run is measured against the same-seed baseline of its backbone, image size
    and device kind."""
    return {
        key: ((m.get("diagnostics") or {}).get("gcm") or {}).get("mean")
        for key, m in baselines_by_key(metas).items()
    }


def diagnose_run(
    run_dir: str,
    load_run_and_data: Callable | None = None,
    *,
    data_root: str | None = None,
    split: str = "train",
    per_class: int | None = None,
    device: str | torch.device | None = None,
    store: bool = True,
    progress: bool = False,
    distributed: bool = False,
    scores: bool = True,
) -> dict:
    """Diagnose a run on one split of its dataset; returns (and by default stores) the dict.

    The result is :func:`csba.diagnostics.diagnose`'s dict plus "split", "generalisation_gap"
    (val minus train loss at the kept epoch, from the run's history) and "conflict_change"
    (mean conflict minus that of the diagnosed same-seed baseline of the same backbone, image
    size and device kind beside it, :func:`csba.conflict_gain.match_key`; None without one).
    ``per_class``: None or 0 for the whole split. Stored under "diagnostics" in run.json,
    and the run's typicality reference (:mod:`csba.typicality`) is written beside it.
    ``progress``: a tqdm bar on stderr for each pass over the split. ``distributed``: under
    torchrun, the conflict matrix is computed across the ranks (store on rank 0 only).
    ``scores``: with ``store``, on the training split, also write every training and test
    image's per-example scores against this matrix (csba.diagnostics.scoring).
    """
    from ..store import update_run_json

    if load_run_and_data is None:  # run + its dataset rebuilt from run.json
        from ..runs import load_run_and_data

    run, bundle = load_run_and_data(run_dir, data_root)
    images = bundle.split(split)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = run.model.to(device)

    batches = _split_batches(images, bundle, split, progress)
    gcm: dict = {}  # the matrix and its class gradient sums, for the per-example scores
    keep = scores and store and split == "train" and not distributed
    out = diagnose(
        model,
        batches,
        run.meta["num_classes"],
        class_names=run.classes,
        subset_per_class=per_class or None,
        seed=run.seed,
        batch_size=BATCH_SIZE,
        distributed=distributed,
        on_gcm=(lambda r, subset: gcm.update(result=r, sums=r.sums, subset=subset))
        if keep
        else None,
    )
    out["split"] = split
    try:
        out["generalisation_gap"] = generalisation_gap(run.meta["history"], run.meta["best_epoch"])
    except (KeyError, TypeError, ValueError):
        out["generalisation_gap"] = None
    out["conflict_change"] = _conflict_change(run, out["gcm"]["mean"])
    if store:
        update_run_json(run.path, diagnostics=out)
        if gcm:
            from .scoring import write_run_scores

            gcm["result"].sums = gcm["sums"]
            write_run_scores(run, bundle, gcm["result"], gcm["subset"], progress=progress)
        _store_typicality(run, bundle)
    return out


def _split_batches(images, bundle, split: str, progress: bool):
    """A callable giving the split's (normalised images, labels) batches in order, without
    augmentation (diagnose makes two passes), each pass with its own progress bar."""
    from ..data import normalize

    passes = [0]

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        passes[0] += 1
        starts = range(0, len(images), BATCH_SIZE)
        desc = f"diagnose {split}, pass {passes[0]}"
        for s in progress_bar(starts, desc=desc, unit="batch", enabled=progress):
            x = normalize(images.images[s : s + BATCH_SIZE], bundle.mean, bundle.std)
            yield x, images.labels[s : s + BATCH_SIZE]

    return batches


def _store_typicality(run, bundle) -> None:
    """The run's OOD reference beside its diagnostics (csba.typicality)."""
    from ..typicality import TypicalityError, ensure_typicality

    try:
        ensure_typicality(run.path, run=run, bundle=bundle, force=True)
    except TypicalityError as e:  # e.g. an empty validation split: diagnostics still stand
        warnings.warn(f"no typicality reference: {e}", stacklevel=2)


def _conflict_change(run, mean: float) -> float | None:
    """Mean conflict minus that of the matched same-seed baseline beside the run (None
    without one); a baseline is its own reference."""
    if run.meta.get("variant") == "baseline":
        base = mean  # itself, as just measured
    else:
        from ..store import list_runs

        metas = [i.meta for i in list_runs(Path(run.path).parent) if i.meta is not None]
        base = _baseline_means(metas).get(match_key(run.meta))
    change = conflict_change(mean, base)
    return None if math.isnan(change) else change


def refresh_conflict_changes(root: str | os.PathLike) -> list[Path]:
    """Recompute the stored ``diagnostics.conflict_change`` of every diagnosed run under ``root``.

    A run diagnosed before its matched baseline (parallel protocol workers), or
    whose baseline was re-diagnosed later, holds a stale value; this rereads both stored means
    (no model is run) and rewrites only the run.json files whose value changes. Returns them.
    """
    from ..store import list_runs, update_run_json

    runs = [i for i in list_runs(root) if i.meta is not None]  # each run.json read once
    means = _baseline_means([i.meta for i in runs])
    changed = []
    for info in runs:
        diag = info.meta.get("diagnostics")
        if not isinstance(diag, dict) or not isinstance(diag.get("gcm"), dict):
            continue
        value = conflict_change(diag["gcm"].get("mean"), means.get(match_key(info.meta)))
        value = None if math.isnan(value) else value
        if value != diag.get("conflict_change"):
            update_run_json(info.path, diagnostics={**diag, "conflict_change": value})
            changed.append(Path(info.path))
    return changed
