"""``diagnose``: every diagnostic of docs/design.md §4 in one JSON-ready dict."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ._utils import as_labels, to_jsonable
from .gcm import (
    GCMResult,
    balanced_subset_indices,
    branch_shares_from_result,
    gradient_conflict_from_batches,
    gradient_conflict_matrix,
)
from .representation import DEFAULT_TOP_FRACTION, _attention_stats, _class_angles, _sweep

__all__ = ["diagnose", "gcm_summary"]

DEFAULT_SUBSET_PER_CLASS = 128  # examples per class for the matrix (None: the whole split)


def _collect(
    batches: Iterable[tuple[Tensor, Tensor]], indices: np.ndarray, num_classes: int
) -> tuple[Tensor, Tensor]:
    """Images and labels at the given (sorted) dataset positions, gathered from batches."""
    wanted = torch.as_tensor(indices, dtype=torch.int64)
    xs, ys = [], []
    start = 0
    for x, y in batches:
        y = as_labels(y, num_classes)
        n = y.shape[0]
        lo, hi = torch.searchsorted(wanted, torch.tensor([start, start + n])).tolist()
        if hi > lo:
            local = wanted[lo:hi] - start
            xs.append(x[local.to(x.device)].cpu())
            ys.append(y[local])
        start += n
        if hi == wanted.numel():
            break
    got = sum(t.shape[0] for t in ys)
    if got != wanted.numel():
        raise ValueError(
            f"train_batches_fn yielded {start} examples on its second call, fewer than the first"
        )
    return torch.cat(xs), torch.cat(ys)


def gcm_summary(
    result: GCMResult, class_names: Sequence[str], adversarial_pairs: int | None = None
) -> dict:
    """The "gcm" part of :func:`diagnose` for a computed result (JSON-ready)."""
    return to_jsonable(
        {
            "classes": list(class_names),
            "matrix": result.matrix,
            "mean": result.mean,
            "std": result.std,
            "norms": result.norms,
            "counts": result.counts,
            "most_adversarial": [
                {"i": i, "j": j, "classes": [class_names[i], class_names[j]], "cos": cos}
                for i, j, cos in result.most_adversarial(adversarial_pairs)
            ],
        }
    )


def _conflict_pass(
    model,
    train_batches_fn,
    labels,
    num_classes,
    subset_per_class,
    seed,
    batch_size,
    distributed,
    on_gcm=None,
):
    """The gradient conflict matrix with layer groups, on the seeded class-balanced subset
    (``subset_per_class`` per class) or, for None, the whole split. ``on_gcm(result, subset
    indices or None)`` gets the result with its per-class gradient sums (per-example scores)."""
    keep = on_gcm is not None
    if subset_per_class is None:
        idx = None
        result = gradient_conflict_from_batches(
            model,
            train_batches_fn(),
            num_classes,
            layer_groups=True,
            batch_size=batch_size,
            distributed=distributed,
            keep_sums=keep,
        )
    else:
        idx = balanced_subset_indices(labels, subset_per_class, seed)
        x, y = _collect(train_batches_fn(), idx, num_classes)
        if not torch.equal(y, torch.as_tensor(labels[idx])):
            raise ValueError("train_batches_fn must yield the same examples in the same order")
        result = gradient_conflict_matrix(
            model,
            x,
            y,
            num_classes,
            layer_groups=True,
            batch_size=batch_size,
            distributed=distributed,
            keep_sums=keep,
        )
    if keep:
        on_gcm(result, idx)
        result.sums = None  # (C, P) floats: not kept past the callback
    return result


def _branch_block(model, result) -> dict | None:
    """Per-class gradient norms and shares per branch, or None for a model without branches."""
    branch_names = getattr(model, "branch_parameter_names", None)
    if not callable(branch_names):
        return None
    shares = branch_shares_from_result(result, branch_names())
    return {"norms": shares.norms, "shares": shares.shares}


def _attention_block(sweep, top_fraction: float) -> dict | None:
    """The attention statistics of pass 1, or None for a model without attention."""
    if sweep.attention_sums is None:
        return None
    att = _attention_stats(sweep.attention_sums, sweep.counts, top_fraction)
    return {
        "top_fraction": att.top_fraction,
        "counts": att.counts,
        "mean": att.mean,
        "overall": att.overall,
        "jaccard": att.jaccard,
        "cosine": att.cosine,
        "jaccard_per_class": att.jaccard_per_class,
        "cosine_per_class": att.cosine_per_class,
    }


def diagnose(
    model: nn.Module,
    train_batches_fn: Callable[[], Iterable[tuple[Tensor, Tensor]]],
    num_classes: int,
    *,
    class_names: Sequence[str] | None = None,
    subset_per_class: int | None = DEFAULT_SUBSET_PER_CLASS,
    seed: int = 0,
    batch_size: int = 64,
    top_fraction: float = DEFAULT_TOP_FRACTION,
    adversarial_pairs: int | None = None,
    distributed: bool = False,
    on_gcm: Callable | None = None,
) -> dict:
    """Run every diagnostic on the training split and return one JSON-serialisable dict.

    train_batches_fn: called with no argument, returns an iterable of (images, labels) batches
    over the training split: float model inputs, no augmentation, the same examples in the same
    order on every call (it is called twice). subset_per_class: the gradient conflict matrix,
    layer groups and branch shares use a seeded class-balanced subset of that many examples per
    class (:func:`balanced_subset_indices` with ``seed``); None uses the whole split. Attention
    and class-mean angles always use the whole split. ``distributed``: under torchrun, the
    matrix's per-class gradient sums are split over the ranks and all-reduced (csba.distributed).
    ``on_gcm(result, subset indices or None)``: called with the matrix's GCMResult holding its
    per-class gradient sums (csba.diagnostics.examples scores images against them).

    Returned keys (arrays as nested lists, NaN as None):

    * ``classes``: class names; ``subset``: {"per_class", "seed", "counts"}.
    * ``gcm``: {"classes", "matrix" (C x C), "mean", "std", "norms" (C), "counts" (C),
      "most_adversarial": [{"i", "j", "classes", "cos"}, ...] most negative first}.
    * ``layers``: group name -> {"matrix", "norms", "mean", "std"} (stem, fire1..8, attention,
      heads; empty for models without ``layer_groups()``).
    * ``branches``: {"norms", "shares"} (C x K; shares rows sum to 1) or None.
    * ``attention``: None without attention, else {"top_fraction", "counts", "mean" (C x K x D),
      "overall" (K x D), "jaccard" (K x K), "cosine" (K x K), "jaccard_per_class" (C x K x K),
      "cosine_per_class" (C x K x K)}.
    * ``class_angles``: {"matrix" (C x C degrees), "mean", "counts"}."""
    names = [str(i) for i in range(num_classes)] if class_names is None else list(class_names)
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} classes")

    # Pass 1 (no gradients): labels, GAP(Z) class means, attention class means.
    sweep = _sweep(model, train_batches_fn(), num_classes, features=True, attention=True)

    # Pass 2: the gradient conflict matrix, on the subset or the whole split.
    args = (sweep.labels, num_classes, subset_per_class, seed, batch_size, distributed, on_gcm)
    result = _conflict_pass(model, train_batches_fn, *args)
    branches = _branch_block(model, result)

    attention = _attention_block(sweep, top_fraction)
    angles = _class_angles(sweep.feature_sums, sweep.counts)
    return to_jsonable(
        {
            "classes": names,
            "subset": {"per_class": subset_per_class, "seed": seed, "counts": result.counts},
            "gcm": gcm_summary(result, names, adversarial_pairs),
            "layers": {
                group: {"matrix": g.matrix, "norms": g.norms, "mean": g.mean, "std": g.std}
                for group, g in result.groups.items()
            },
            "branches": branches,
            "attention": attention,
            "class_angles": {
                "matrix": angles.angles,
                "mean": angles.mean,
                "counts": angles.counts,
            },
        }
    )
