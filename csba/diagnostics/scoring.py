"""Per-example scores of a run folder (csba.diagnostics.examples): every training and test
image, against the class gradient sums of the run's own Gradient Conflict Matrix, written to
``example_scores.safetensors``. ``diagnose`` calls :func:`write_run_scores` with the matrix it
has just computed; :func:`score_run` (``python -m csba diagnose RUN --scores-only``) recomputes
the sums for a run diagnosed before scores existed, checks that they give its stored matrix,
and writes only the new file (run.json, weights and typicality files stay byte-identical).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from .examples import ExampleScores, example_scores, save_scores

__all__ = ["score_run", "write_run_scores"]

BATCH = 64  # images per decoded batch; the per-example gradients go in chunks of 16


def _batches(bundle, split: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    from ..data import normalize

    images = bundle.split(split)
    for s in range(0, len(images), BATCH):
        x = normalize(images.images[s : s + BATCH], bundle.mean, bundle.std)
        yield x, images.labels[s : s + BATCH]


def _bar(bundle, splits, progress: bool) -> Iterator | None:
    if not progress:
        return None
    from ..progress import progress_bar
    from .examples import CHUNK

    total = sum(-(-len(bundle.split(s)) // CHUNK) for s in splits)  # chunks, rounded up
    return iter(progress_bar(range(total), desc="per-example scores", unit="chunk"))


def write_run_scores(run, bundle, result, subset, *, progress: bool = False) -> Path:
    """Score the run's training and test images against ``result.sums`` (the GCM over the
    training images ``subset``, None: all of them) and write the file; returns its path."""
    model = run.model
    n_train = len(bundle.split("train"))
    inside = np.ones(n_train, bool) if subset is None else np.zeros(n_train, bool)
    if subset is not None:
        inside[np.asarray(subset)] = True
    bar = _bar(bundle, ("train", "test"), progress)
    scores: dict[str, ExampleScores] = {}
    for split, mask in (("train", inside), ("test", None)):
        scores[split] = example_scores(
            model, _batches(bundle, split), result.sums, result.counts, mask, progress=bar
        )
    info = {
        "classes": [str(c) for c in run.classes],
        "gcm_subset_per_class": None
        if subset is None
        else int(np.bincount(bundle.split("train").labels.numpy()[np.asarray(subset)]).max()),
        "gcm_images": int(np.asarray(result.counts).sum()),
    }
    return save_scores(run.path, scores, info)


# How closely the recomputed matrix must match the stored one. Another CPU sums float32 in
# another order: the shipped ELPV runs (diagnosed on another machine) reproduce to 4.5e-5
# (baseline-s0); other weights or another data split move cosines by 1e-2 or more.
REPRODUCE_ATOL = 1e-3


def score_run(
    run_dir: str, data_root: str | None = None, device: str | None = None, progress: bool = False
) -> Path:
    """Scores for a diagnosed run from its stored diagnosis settings: the class gradient sums
    are recomputed (one pass, as diagnose does) and must reproduce the stored matrix to
    REPRODUCE_ATOL; only ``example_scores.safetensors`` is written."""
    from ..runs import load_run_and_data
    from ..store import RunError
    from .gcm import (
        balanced_subset_indices,
        gradient_conflict_from_batches,
        gradient_conflict_matrix,
    )

    run, bundle = load_run_and_data(run_dir, data_root)
    diag = run.meta.get("diagnostics")
    if not isinstance(diag, dict) or not isinstance(diag.get("gcm"), dict):
        raise RunError(f"'{run_dir}' is not diagnosed; run python -m csba diagnose first")
    run.model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    C, per_class = run.meta["num_classes"], (diag.get("subset") or {}).get("per_class")
    if per_class is None:
        subset = None
        result = gradient_conflict_from_batches(
            run.model, _batches(bundle, "train"), C, batch_size=BATCH, keep_sums=True
        )
    else:
        labels = bundle.split("train").labels.numpy()
        subset = balanced_subset_indices(labels, int(per_class), run.seed)
        x, y = next(_batches_of(bundle, subset))
        result = gradient_conflict_matrix(run.model, x, y, C, batch_size=BATCH, keep_sums=True)
    stored = np.array(diag["gcm"]["matrix"], dtype=float)
    gap = (
        float(np.nanmax(np.abs(result.matrix - stored)))
        if stored.shape == result.matrix.shape
        else np.inf
    )
    if not gap <= REPRODUCE_ATOL:
        raise RunError(
            f"'{run_dir}': the recomputed conflict matrix differs from the stored one by {gap:.1e} "
            f"(more than {REPRODUCE_ATOL:g}): other weights or data than the diagnosis used"
        )
    return write_run_scores(run, bundle, result, subset, progress=progress)


def _batches_of(bundle, idx):
    from ..data import normalize

    images = bundle.split("train")
    sel = torch.as_tensor(np.asarray(idx), dtype=torch.int64)
    yield normalize(images.images[sel], bundle.mean, bundle.std), images.labels[sel]
