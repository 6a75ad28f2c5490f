"""Training losses (docs/design.md §2): the pinned class-weighted cross-entropy, focal loss and
the long-tail losses (logit adjustment, LDAM with deferred re-weighting, per-class means)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "class_weights",
    "effective_number_weights",
    "focal_loss",
    "ldam_loss",
    "ldam_margins",
    "log_prior",
    "logit_adjusted_loss",
    "make_loss",
    "per_class_mean_losses",
    "weighted_cross_entropy",
]

LOSSES = ("ce", "focal", "logit_adjust", "ldam", "class_mean")


def class_weights(counts: list[int] | Tensor) -> Tensor:
    """w_c = N / (C * n_c) from training-split counts; an empty class gets weight 0."""
    n = torch.as_tensor(counts, dtype=torch.float32)
    w = n.sum() / (len(n) * n.clamp_min(1))
    return torch.where(n > 0, w, torch.zeros_like(w))


def effective_number_weights(counts: list[int] | Tensor, beta: float = 0.9999) -> Tensor:
    """Class-balanced weights of Cui et al. (CVPR 2019), as LDAM-DRW's re-weighting uses them:
    w_c = (1 - beta) / (1 - beta^n_c), scaled so that the weights sum to C. Empty class: 0."""
    n = torch.as_tensor(counts, dtype=torch.float64)
    w = (1.0 - beta) / (1.0 - beta ** n.clamp_min(1))
    w = torch.where(n > 0, w, torch.zeros_like(w))
    return (w / w.sum() * (n > 0).sum()).float()


def log_prior(counts: list[int] | Tensor) -> Tensor:
    """log(n_c / N), (C,); an empty class gets log(1 / N) so that no logit becomes infinite."""
    n = torch.as_tensor(counts, dtype=torch.float64).clamp_min(1)
    return torch.log(n / n.sum()).float()


def ldam_margins(counts: list[int] | Tensor, max_margin: float = 0.5) -> Tensor:
    """LDAM margins m_c proportional to n_c^(-1/4), the largest (rarest class) ``max_margin``."""
    m = torch.as_tensor(counts, dtype=torch.float64).clamp_min(1) ** -0.25
    return (m * (max_margin / m.max())).float()


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


def logit_adjusted_loss(
    logits: Tensor, targets: Tensor, prior_log: Tensor, tau: float = 1.0
) -> Tensor:
    """Logit-adjusted cross-entropy (Menon et al., ICLR 2021, loss form): unweighted
    cross-entropy of ``logits + tau * log(prior)``. At tau = 1 it is the balanced softmax loss
    (Ren et al., NeurIPS 2020). Prediction keeps the raw logits."""
    z = logits.float() + tau * prior_log.to(logits.device)
    return F.cross_entropy(z, targets.to(logits.device))


def ldam_loss(
    logits: Tensor,
    targets: Tensor,
    margins: Tensor,
    scale: float = 30.0,
    weight: Tensor | None = None,
) -> Tensor:
    """LDAM loss (Cao et al., NeurIPS 2019) on ``logits = scale * cos``: the target logit is
    lowered by ``scale * m_y`` before a (weighted) cross-entropy, i.e. CE(s (cos - m_y 1_y))."""
    z = logits.float()
    y = targets.to(z.device)
    z = z - F.one_hot(y, z.shape[1]).to(z.dtype) * (scale * margins.to(z.device))[y][:, None]
    return weighted_cross_entropy(z, y, weight)


def per_class_mean_losses(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy of each class present in the batch: ``(losses (P,), classes (P,))``,
    classes in increasing order; a class absent from the batch is skipped."""
    per_sample = F.cross_entropy(logits.float(), targets, reduction="none")  # (B,)
    classes, inverse = torch.unique(targets, sorted=True, return_inverse=True)
    sums = torch.zeros(len(classes), device=per_sample.device).index_add(0, inverse, per_sample)
    counts = torch.bincount(inverse, minlength=len(classes)).to(sums.dtype)
    return sums / counts, classes


def _normalised(fn, weight: Tensor | None):
    """Tag a loss that is a mean normalised by the summed weights of the batch's labels
    (``fn.norm_weight``); untagged losses are plain means over the batch. A distributed run
    (csba.distributed) normalises by the same sum over the whole global batch."""
    fn.norm_weight = weight
    return fn


def make_loss(
    kind: str,
    weight: Tensor | None,
    gamma: float = 2.0,
    *,
    counts: list[int] | None = None,
    tau: float = 1.0,
    scale: float = 30.0,
):
    """-> loss_fn(logits, targets) for ``kind`` (one of ``LOSSES``).

    ``weight``: per-class weights for ce, focal (its alpha) and ldam (None: unweighted).
    logit_adjust and ldam need the training ``counts``. class_mean is the mean over the
    classes present of their mean cross-entropy (the loss PCGrad's steps report).
    """
    if kind == "ce":
        return _normalised(lambda logits, y: weighted_cross_entropy(logits, y, weight), weight)
    if kind == "focal":
        return lambda logits, y: focal_loss(logits, y, weight, gamma)
    if kind in ("logit_adjust", "ldam") and counts is None:
        raise ValueError(f"loss {kind!r} needs the training class counts")
    if kind == "logit_adjust":
        prior = log_prior(counts)
        return lambda logits, y: logit_adjusted_loss(logits, y, prior, tau)
    if kind == "ldam":
        margins = ldam_margins(counts)
        return _normalised(lambda logits, y: ldam_loss(logits, y, margins, scale, weight), weight)
    if kind == "class_mean":
        return lambda logits, y: per_class_mean_losses(logits, y)[0].mean()
    raise ValueError(f"unknown loss {kind!r}; choose one of: {', '.join(LOSSES)}")
