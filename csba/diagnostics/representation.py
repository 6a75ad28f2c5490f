"""Attention overlap between branches and class-mean geometry of GAP(Z) (docs/design.md §4).

Both come from eval-mode forward passes without gradients. Attention is grouped by the TRUE
label of each example. Models need ``forward_features(x) -> Z`` (B, D, h, w) and
``head_parts(z)`` returning an object with ``attention`` ((B, K, D) or None).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ._utils import as_input, as_labels, eval_mode, float32_compute, model_device

__all__ = [
    "AttentionStats",
    "ClassAngles",
    "ImageAttention",
    "attention_for_image",
    "attention_statistics",
    "class_mean_angles",
    "cosine_similarity_matrix",
    "pairwise_angles",
    "top_channel_jaccard",
]

DEFAULT_TOP_FRACTION = 0.1  # top-10% channels per attention vector (docs/design.md §4)


# ---- pure array helpers ----------------------------------------------------------------------


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; NaN rows where the norm is zero or not finite."""
    v = np.asarray(vectors, dtype=np.float64)
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((n > 0) & np.isfinite(n), v / np.where(n > 0, n, 1.0), np.nan)


def cosine_similarity_matrix(vectors: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarity of the rows of ``vectors`` (K, D) -> (K, K), float64.

    Zero or NaN rows give NaN rows and columns.
    """
    u = _unit_rows(vectors)
    cos = np.clip(u @ u.T, -1.0, 1.0)
    ok = np.flatnonzero(np.isfinite(u).all(axis=1))
    cos[ok, ok] = 1.0
    return cos


def top_channel_jaccard(
    vectors: np.ndarray, top_fraction: float = DEFAULT_TOP_FRACTION
) -> np.ndarray:
    """Jaccard index of the top-``top_fraction`` channel sets of each pair of rows, (K, K).

    Each row (K, D) selects its max(1, round(top_fraction * D)) largest channels (ties broken by
    channel index); J[a, b] = |A & B| / |A | B|. Rows with NaN give NaN rows and columns.
    """
    if not 0 < top_fraction <= 1:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    v = np.asarray(vectors, dtype=np.float64)
    k_rows, dim = v.shape
    top = max(1, round(top_fraction * dim))
    valid = np.isfinite(v).all(axis=1)
    masks = np.zeros((k_rows, dim), dtype=np.float64)
    for r in np.flatnonzero(valid):
        masks[r, np.argsort(-v[r], kind="stable")[:top]] = 1.0
    inter = masks @ masks.T
    jac = inter / (2 * top - inter)  # |A | B| = |A| + |B| - |A & B|, |A| = |B| = top
    jac[~valid, :] = np.nan
    jac[:, ~valid] = np.nan
    return jac


def pairwise_angles(vectors: np.ndarray) -> np.ndarray:
    """Angles in degrees between the rows of ``vectors`` (C, D) -> (C, C), float64.

    Uses 2 * atan2(|u - v|, |u + v|) on unit vectors, which is exact near 0 and 180 degrees
    (arccos of the cosine is not). Zero or NaN rows give NaN.
    """
    u = _unit_rows(vectors)
    diff = np.linalg.norm(u[:, None, :] - u[None, :, :], axis=-1)
    summ = np.linalg.norm(u[:, None, :] + u[None, :, :], axis=-1)
    return np.degrees(2.0 * np.arctan2(diff, summ))


# ---- model passes ----------------------------------------------------------------------------


@dataclass
class _Sweep:
    """Sums over one eval-mode pass: GAP(Z) per class, attention per class, labels seen."""

    counts: np.ndarray  # (C,) int64
    feature_sums: np.ndarray | None  # (C, D) float64
    attention_sums: np.ndarray | None  # (C, K, D) float64, None without attention
    labels: np.ndarray  # (N,) int64, in the order seen


def _sweep(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    num_classes: int,
    *,
    features: bool = True,
    attention: bool = True,
) -> _Sweep:
    for hook in ("forward_features", "head_parts"):
        if not callable(getattr(model, hook, None)):
            raise AttributeError(f"{type(model).__name__} has no {hook}()")
    device = model_device(model)
    counts = np.zeros(num_classes, dtype=np.int64)
    feat_sums = att_sums = None
    has_attention = attention
    labels = []
    with eval_mode(model), torch.no_grad(), float32_compute(device):
        for x, y in batches:
            y = as_labels(y, num_classes)
            labels.append(y.numpy())
            x = as_input(x, device)
            z = model.forward_features(x)  # (B, D, h, w)
            onehot = torch.nn.functional.one_hot(y, num_classes).double()  # (B, C)
            counts += onehot.sum(0).numpy().astype(np.int64)
            if features:
                gap = z.float().mean(dim=(2, 3)).double().cpu()  # (B, D)
                f = (onehot.T @ gap).numpy()  # (C, D) per-class sums
                feat_sums = f if feat_sums is None else feat_sums + f
            if has_attention:
                a = model.head_parts(z).attention  # (B, K, D) or None
                if a is None:
                    has_attention = False
                    continue
                a = a.double().cpu()
                s = torch.einsum("bc,bkd->ckd", onehot, a).numpy()  # (C, K, D)
                att_sums = s if att_sums is None else att_sums + s
    return _Sweep(
        counts=counts,
        feature_sums=feat_sums,
        attention_sums=att_sums if has_attention else None,
        labels=np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64),
    )


def _class_means(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Divide per-class sums (C, ...) by counts; NaN for classes without examples."""
    shape = (-1,) + (1,) * (sums.ndim - 1)
    n = counts.astype(np.float64).reshape(shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n > 0, sums / np.where(n > 0, n, 1.0), np.nan)


# ---- attention -------------------------------------------------------------------------------


@dataclass
class AttentionStats:
    """Per-class mean attention and branch overlap.

    mean: (C, K, D) mean attention vector of each branch over each class's examples (NaN for a
    class without examples). overall: (K, D) the mean of the class means (each present class
    weighs the same, so majority classes do not dominate). counts: (C,). jaccard / cosine:
    (K, K) overlap of the overall vectors; jaccard_per_class / cosine_per_class: (C, K, K).
    """

    mean: np.ndarray
    overall: np.ndarray
    counts: np.ndarray
    jaccard: np.ndarray
    cosine: np.ndarray
    jaccard_per_class: np.ndarray
    cosine_per_class: np.ndarray
    top_fraction: float


def _attention_stats(
    att_sums: np.ndarray, counts: np.ndarray, top_fraction: float
) -> AttentionStats:
    mean = _class_means(att_sums, counts)  # (C, K, D)
    present = counts > 0
    k = mean.shape[1]
    overall = mean[present].mean(axis=0) if present.any() else np.full(mean.shape[1:], np.nan)
    nan_kk = np.full((k, k), np.nan)
    return AttentionStats(
        mean=mean,
        overall=overall,
        counts=counts,
        jaccard=top_channel_jaccard(overall, top_fraction),
        cosine=cosine_similarity_matrix(overall),
        jaccard_per_class=np.stack(
            [top_channel_jaccard(m, top_fraction) if p else nan_kk for m, p in zip(mean, present)]
        ),
        cosine_per_class=np.stack(
            [cosine_similarity_matrix(m) if p else nan_kk for m, p in zip(mean, present)]
        ),
        top_fraction=top_fraction,
    )


def attention_statistics(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    num_classes: int,
    *,
    top_fraction: float = DEFAULT_TOP_FRACTION,
) -> AttentionStats | None:
    """Per-class mean attention per branch and branch overlap over (images, labels) batches.

    Returns None for a model whose ``head_parts`` gives no attention (baseline, focal,
    gradnorm). Eval mode, no gradients; the model's modes are restored.
    """
    sweep = _sweep(model, batches, num_classes, features=False, attention=True)
    if sweep.attention_sums is None:
        return None
    return _attention_stats(sweep.attention_sums, sweep.counts, top_fraction)


@dataclass
class ImageAttention:
    """One image: attention (K, D), branch overlap (K, K) and the model's logits (C,)."""

    attention: np.ndarray
    jaccard: np.ndarray
    cosine: np.ndarray
    logits: np.ndarray


def attention_for_image(
    model: nn.Module, x: Tensor, *, top_fraction: float = DEFAULT_TOP_FRACTION
) -> ImageAttention | None:
    """Attention of each branch for one image x, (3, H, W) or (1, 3, H, W), and its overlap.

    Returns None for models without attention. Eval mode, no gradients; modes restored.
    """
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.shape[0] != 1:
        raise ValueError(f"expected one image, got a batch of {x.shape[0]}")
    device = model_device(model)
    with eval_mode(model), torch.no_grad(), float32_compute(device):
        out = model.head_parts(model.forward_features(as_input(x, device)))
    if out.attention is None:
        return None
    a = out.attention[0].double().cpu().numpy()  # (K, D)
    return ImageAttention(
        attention=a,
        jaccard=top_channel_jaccard(a, top_fraction),
        cosine=cosine_similarity_matrix(a),
        logits=out.logits[0].double().cpu().numpy(),
    )


# ---- class-mean geometry ---------------------------------------------------------------------


@dataclass
class ClassAngles:
    """Class means of GAP(Z), (C, D), counts (C,) and pairwise angles in degrees, (C, C)."""

    means: np.ndarray
    counts: np.ndarray
    angles: np.ndarray

    @property
    def mean(self) -> float:
        """Mean off-diagonal angle in degrees over finite pairs (NaN if none)."""
        c = self.angles.shape[0]
        vals = self.angles[np.triu_indices(c, k=1)]
        vals = vals[np.isfinite(vals)]
        return float(vals.mean()) if vals.size else math.nan


def class_mean_angles(
    model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], num_classes: int
) -> ClassAngles:
    """Mean GAP(Z) per class over (images, labels) batches and pairwise angles between them.

    Eval mode, no gradients; modes restored. Classes without examples give NaN.
    """
    sweep = _sweep(model, batches, num_classes, features=True, attention=False)
    return _class_angles(sweep.feature_sums, sweep.counts)


def _class_angles(feature_sums: np.ndarray | None, counts: np.ndarray) -> ClassAngles:
    if feature_sums is None:  # no batches at all
        means = np.full((counts.shape[0], 1), np.nan)
    else:
        means = _class_means(feature_sums, counts)
    return ClassAngles(means=means, counts=counts, angles=pairwise_angles(means))
