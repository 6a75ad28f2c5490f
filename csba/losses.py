"""Training losses: class-weighted cross-entropy and focal loss (docs/design.md §2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["class_weights", "focal_loss", "make_loss", "weighted_cross_entropy"]


def class_weights(counts: list[int] | Tensor) -> Tensor:
    """w_c = N / (C * n_c) from training-split counts; an empty class gets weight 0."""
    n = torch.as_tensor(counts, dtype=torch.float32)
    w = n.sum() / (len(n) * n.clamp_min(1))
    return torch.where(n > 0, w, torch.zeros_like(w))


def weighted_cross_entropy(logits: Tensor, targets: Tensor, weight: Tensor | None) -> Tensor:
    """Class-weighted cross-entropy, normalised by the summed weights (PyTorch's convention).

    ``weight`` follows ``logits`` to their device: training's weights live on the GPU while the
    per-epoch validation loss is computed from probabilities on the CPU.
    """
    if weight is not None:
        weight = weight.to(logits.device)
    return F.cross_entropy(logits.float(), targets.to(logits.device), weight=weight)


def focal_loss(
    logits: Tensor, targets: Tensor, alpha: Tensor | None = None, gamma: float = 2.0
) -> Tensor:
    """Focal loss: mean over the batch of -alpha_y (1 - p_y)^gamma log p_y.

    logits (B, C), targets (B,) int64; alpha (C,) per-class weights or None. Computed in float32.
    """
    logp = F.log_softmax(logits.float(), dim=1).gather(1, targets[:, None]).squeeze(1)
    loss = -((1.0 - logp.exp()).clamp_min(0.0) ** gamma) * logp
    if alpha is not None:
        loss = loss * alpha.to(loss.device)[targets]
    return loss.mean()


def make_loss(kind: str, weight: Tensor | None, gamma: float = 2.0):
    """-> loss_fn(logits, targets) for ``kind`` "ce" or "focal"."""
    if kind == "ce":
        return lambda logits, y: weighted_cross_entropy(logits, y, weight)
    if kind == "focal":
        return lambda logits, y: focal_loss(logits, y, weight, gamma)
    raise ValueError(f"unknown loss {kind!r}; choose ce or focal")
