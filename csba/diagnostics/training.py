"""Diagnostics tied to training: generalisation gap, conflict change, conflict over epochs."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ._utils import as_labels, model_device, to_jsonable
from .gcm import balanced_subset_indices, gradient_conflict_matrix

__all__ = ["ConflictTracker", "conflict_change", "generalisation_gap"]


def generalisation_gap(history: Sequence[Mapping], best_epoch: int) -> float:
    """Validation loss minus training loss at the kept (best) epoch.

    history: one dict per epoch with keys "epoch", "train_loss", "val_loss". Raises KeyError
    when no entry has ``epoch == best_epoch``. Positive: the model fits training data better.
    """
    for entry in history:
        if int(entry["epoch"]) == int(best_epoch):
            return float(entry["val_loss"]) - float(entry["train_loss"])
    raise KeyError(f"epoch {best_epoch} is not in the training history")


def conflict_change(gcm_mean: float | None, baseline_gcm_mean: float | None) -> float:
    """Change of mean gradient conflict against the baseline: ``gcm_mean - baseline_gcm_mean``.

    Means are mean off-diagonal cosines, so a positive change means less conflict (gradients
    more aligned) than the baseline. NaN when either is missing (None or NaN).
    """
    if gcm_mean is None or baseline_gcm_mean is None:
        return math.nan
    return float(gcm_mean) - float(baseline_gcm_mean)


class ConflictTracker:
    """Records the Gradient Conflict Matrix on a fixed, class-balanced subset during training.

    Holds the subset's images (float, ready for the model) and labels. ``record(model, epoch)``
    costs one eval-mode forward+backward pass over the subset (whole-model matrix only, no layer
    groups) and leaves the model's modes and ``.grad`` as they were, so it can run between
    epochs. ``history`` is a list of JSON-ready dicts
    {"epoch", "matrix", "mean", "std", "norms", "counts"}, in recording order.

    Build it with :meth:`from_dataset` from the whole training split (images may be uint8 with
    a ``transform`` that turns them into model inputs), or directly from a subset.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        num_classes: int,
        *,
        every: int = 1,
        batch_size: int = 64,
        indices: Sequence[int] | None = None,
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        labels = as_labels(labels, num_classes)
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        if not images.is_floating_point():
            raise TypeError("images must be float model inputs; pass a transform to from_dataset")
        self.images = images
        self.labels = labels
        self.num_classes = num_classes
        self.every = every
        self.batch_size = batch_size
        self.indices = None if indices is None else [int(i) for i in indices]
        self.history: list[dict] = []
        self._on_device: tuple[torch.device, Tensor, Tensor] | None = None

    @classmethod
    def from_dataset(
        cls,
        images: Tensor,
        labels: Tensor,
        num_classes: int,
        *,
        per_class: int = 32,
        seed: int = 0,
        transform: Callable[[Tensor], Tensor] | None = None,
        every: int = 1,
        batch_size: int = 64,
    ) -> ConflictTracker:
        """Pick ``per_class`` examples per class with :func:`balanced_subset_indices`.

        ``transform`` maps the selected images (e.g. cached uint8) to float model inputs, once.
        The chosen dataset indices are kept in ``indices`` (and in :meth:`state`).
        """
        labels = as_labels(labels, num_classes)
        idx = balanced_subset_indices(labels.numpy(), per_class, seed)
        sel = torch.as_tensor(idx, dtype=torch.int64)
        subset = images[sel.to(images.device)]
        if transform is not None:
            subset = transform(subset)
        return cls(
            subset,
            labels[sel],
            num_classes,
            every=every,
            batch_size=batch_size,
            indices=idx.tolist(),
        )

    @classmethod
    def from_split(
        cls,
        split,
        mean: Sequence[float],
        std: Sequence[float],
        num_classes: int,
        per_class: int = 16,
        seed: int = 0,
        *,
        every: int = 1,
        batch_size: int = 64,
    ) -> ConflictTracker:
        """:meth:`from_dataset` on a ``csba.data.ImageSet`` (uint8 images, labels), normalised
        with the dataset's per-channel ``mean`` and ``std`` exactly as in training."""
        from ..data import normalize

        return cls.from_dataset(
            split.images,
            split.labels,
            num_classes,
            per_class=per_class,
            seed=seed,
            transform=lambda t: normalize(t, list(mean), list(std)),
            every=every,
            batch_size=batch_size,
        )

    def due(self, epoch: int) -> bool:
        """Whether ``epoch`` is a recording epoch (multiples of ``every``)."""
        return epoch % self.every == 0

    def _device_copy(self, device: torch.device) -> tuple[Tensor, Tensor]:
        # Keep one copy on the model's device so repeated records do not re-transfer.
        if self._on_device is None or self._on_device[0] != device:
            self._on_device = (device, self.images.to(device), self.labels)
        return self._on_device[1], self._on_device[2]

    def record(self, model: nn.Module, epoch: int) -> dict:
        """Compute the matrix on the subset now, append it to ``history`` and return it."""
        device = model_device(model)
        x, y = self._device_copy(device)
        result = gradient_conflict_matrix(
            model, x, y, self.num_classes, layer_groups=False, batch_size=self.batch_size
        )
        entry = to_jsonable(
            {
                "epoch": int(epoch),
                "matrix": result.matrix,
                "mean": result.mean,
                "std": result.std,
                "norms": result.norms,
                "counts": result.counts,
            }
        )
        self.history.append(entry)
        return entry

    def maybe_record(self, model: nn.Module, epoch: int) -> dict | None:
        """:meth:`record` when :meth:`due`, else None."""
        return self.record(model, epoch) if self.due(epoch) else None

    def state(self) -> dict:
        """JSON-ready record of the tracker: subset indices, counts and history."""
        counts = np.bincount(self.labels.numpy(), minlength=self.num_classes)
        return to_jsonable(
            {
                "every": self.every,
                "indices": self.indices,
                "counts": counts,
                "history": self.history,
            }
        )
