"""Gradient Conflict Matrix (docs/design.md §4) and branch gradient shares.

g_c is the gradient, over every trainable parameter, of the mean cross-entropy over the examples
of class c, with the model in eval mode (BatchNorm uses its running statistics, dropout is off),
so that an example's loss does not depend on the other examples of its batch. Then the gradient
of a class-pure batch's summed loss is exactly the sum of its examples' gradients, and

    g_c = (1 / n_c) * sum over class-pure chunks of class c of grad(sum of CE over the chunk).

Each example goes through one forward and one backward pass, whatever C is: the cost is about
one forward+backward pass over the data, not C of them. The per-class gradient sums are held in
one (C, P) float32 buffer (P trainable parameters); every summary (whole model, layer groups,
branches) is derived from per-parameter Gram matrices of that buffer, with no further passes.

The loss is the plain (unweighted) cross-entropy for every variant. A class weight w_c, as in
training, would scale g_c by w_c: the cosines would not change, only the norms.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._utils import (
    as_input,
    as_labels,
    eval_mode,
    float32_compute,
    model_device,
    nan_mean,
    nan_std,
    off_diagonal_upper,
)

__all__ = [
    "BranchShares",
    "GCMResult",
    "GroupConflict",
    "balanced_subset_indices",
    "branch_gradient_shares",
    "branch_shares_from_result",
    "gradient_conflict_from_batches",
    "gradient_conflict_matrix",
]


class GroupConflict(NamedTuple):
    """Conflict restricted to a set of parameters: cosine matrix (C, C) and norms (C,)."""

    matrix: np.ndarray
    norms: np.ndarray

    @property
    def mean(self) -> float:
        """Mean of the finite off-diagonal upper-triangle cosines (NaN if none)."""
        return nan_mean(off_diagonal_upper(self.matrix))

    @property
    def std(self) -> float:
        """Population std of the finite off-diagonal upper-triangle cosines (NaN if none)."""
        return nan_std(off_diagonal_upper(self.matrix))


@dataclass
class GCMResult:
    """Result of :func:`gradient_conflict_matrix`.

    matrix: (C, C) float64, ``matrix[i, j] = cos(g_i, g_j)``; NaN row and column for a class
    without examples (or with an exactly zero gradient). norms: (C,) L2 norm of each g_c (the
    gradient of the MEAN loss, so norms of classes of different sizes are comparable). counts:
    (C,) examples per class. classes_present: class indices with at least one example.
    groups: layer group name -> :class:`GroupConflict` (empty when not asked for or when the
    model has no ``layer_groups()``). param_grams: parameter name -> (C, C) Gram matrix
    ``<g_i|p, g_j|p>`` of the mean-loss gradients restricted to that parameter, from which any
    parameter subset's matrix follows (:meth:`subset`).
    """

    matrix: np.ndarray
    norms: np.ndarray
    counts: np.ndarray
    classes_present: list[int]
    groups: dict[str, GroupConflict] = field(default_factory=dict)
    param_grams: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    # keep_sums=True: the (C, P) float32 per-class SUM-of-loss gradients over the trainable
    # parameters in named_parameters() order (csba.diagnostics.examples scores against them)
    sums: Tensor | None = field(default=None, repr=False)

    @property
    def num_classes(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def mean(self) -> float:
        """Mean of the off-diagonal upper triangle, NaN entries ignored (NaN if none left)."""
        return nan_mean(off_diagonal_upper(self.matrix))

    @property
    def std(self) -> float:
        """Population std (ddof 0) of the off-diagonal upper triangle, NaN entries ignored."""
        return nan_std(off_diagonal_upper(self.matrix))

    def most_adversarial(self, k: int | None = 5) -> list[tuple[int, int, float]]:
        """The k class pairs (i < j) with the most negative cosine, most negative first.

        NaN pairs are skipped; ``k=None`` returns every pair. Ties keep (i, j) order.
        """
        c = self.num_classes
        pairs = [
            (i, j, float(self.matrix[i, j]))
            for i in range(c)
            for j in range(i + 1, c)
            if math.isfinite(self.matrix[i, j])
        ]
        pairs.sort(key=lambda t: t[2])  # stable: ties stay in (i, j) order
        return pairs if k is None else pairs[:k]

    def subset(self, names: Iterable[str]) -> GroupConflict:
        """Matrix and norms of the gradients restricted to the parameters ``names``.

        Names the model does not have, or that are frozen, are ignored.
        """
        gram = np.zeros((self.num_classes, self.num_classes))
        for name in names:
            if name in self.param_grams:
                gram = gram + self.param_grams[name]
        return GroupConflict(*_cosine_from_gram(gram))


class BranchShares(NamedTuple):
    """Per-class gradient norm on each branch's parameters, (C, K), and its share (rows sum to 1).

    Rows of classes without examples (or with no gradient on any branch) are NaN.
    """

    norms: np.ndarray
    shares: np.ndarray


# ---- subset selection ------------------------------------------------------------------------


def balanced_subset_indices(labels, per_class: int, seed: int = 0) -> np.ndarray:
    """Indices of a fixed, seeded, class-balanced subset: up to ``per_class`` examples per class.

    A class with fewer examples contributes all of them. The same labels, ``per_class`` and
    ``seed`` always give the same indices, returned sorted ascending (dataset order), int64.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    labels = np.asarray(labels).reshape(-1)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):  # sorted, so the RNG stream is consumed in a fixed order
        idx = np.flatnonzero(labels == c)
        if idx.size > per_class:
            idx = rng.choice(idx, size=per_class, replace=False)
        chosen.append(idx)
    if not chosen:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(chosen)).astype(np.int64)


# ---- class-pure chunking ---------------------------------------------------------------------


def _chunks_from_tensors(
    inputs: Tensor, targets: Tensor, num_classes: int, batch_size: int
) -> Iterator[tuple[int, Tensor]]:
    """(class, images) chunks of at most batch_size, each holding one class only."""
    for c in range(num_classes):
        idx = torch.nonzero(targets == c).reshape(-1)
        for start in range(0, idx.numel(), batch_size):
            yield c, inputs[idx[start : start + batch_size].to(inputs.device)]


def _chunks_from_batches(
    batches: Iterable[tuple[Tensor, Tensor]], num_classes: int, batch_size: int, max_buffered: int
) -> Iterator[tuple[int, Tensor]]:
    """Regroup mixed batches into class-pure chunks.

    Each class's examples wait in a buffer until it holds batch_size of them; when all buffers
    together hold more than max_buffered examples, the fullest is flushed early. Chunk sizes do
    not change the gradient sums (eval mode), only the speed, and the buffers bound the memory.
    """
    buffers: list[list[Tensor]] = [[] for _ in range(num_classes)]
    sizes = [0] * num_classes

    def take(c: int, n: int | None) -> Tensor:
        joined = torch.cat(buffers[c]) if len(buffers[c]) > 1 else buffers[c][0]
        head, rest = (joined, joined[:0]) if n is None else (joined[:n], joined[n:])
        buffers[c] = [rest] if rest.shape[0] else []
        sizes[c] = int(rest.shape[0])
        return head

    for x, y in batches:
        y = as_labels(y, num_classes)
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"batch has {x.shape[0]} images but {y.shape[0]} labels")
        y = y.to(x.device)
        for c in torch.unique(y).tolist():
            mask = y == c
            buffers[c].append(x[mask])
            sizes[c] += int(mask.sum())
            while sizes[c] >= batch_size:
                yield c, take(c, batch_size)
        while sum(sizes) > max_buffered:
            c = int(np.argmax(sizes))
            yield c, take(c, None)
    for c in range(num_classes):
        if sizes[c]:
            yield c, take(c, None)


# ---- the accumulation ------------------------------------------------------------------------


def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    return params


def _class_gradient_grams(
    model: nn.Module,
    chunks: Iterable[tuple[int, Tensor]],
    num_classes: int,
    distributed: bool = False,
) -> tuple[dict[str, np.ndarray], np.ndarray, Tensor]:
    """Per-parameter Gram matrices of the per-class SUM-of-loss gradients, class counts, and
    the sums themselves.

    Returns ({name: (C, C) float64}, counts (C,) int64, sums (C, P) float32). One eval-mode
    forward and backward per chunk; .grad of every parameter is left untouched
    (torch.autograd.grad, not .backward).
    ``distributed`` (an initialised torch.distributed process group, every rank holding the
    same model and data): rank r takes the chunks r, r + N, ...; the per-class sums and counts
    are all-reduced, so every rank gets the one-process result (up to float summation order).
    """
    rank, world = 0, 1
    if distributed:
        import torch.distributed as dist

        rank, world = dist.get_rank(), dist.get_world_size()
    params = _trainable(model)
    device = model_device(model)
    sizes = [p.numel() for _, p in params]
    # (C, P) float32 sums of per-example gradients, one row per class: memory O(C * P).
    sums = torch.zeros(num_classes, sum(sizes), dtype=torch.float32, device=device)
    views = list(torch.split(sums, sizes, dim=1))  # per-parameter (C, numel) views into sums
    counts = np.zeros(num_classes, dtype=np.int64)
    tensors = [p for _, p in params]

    with eval_mode(model), torch.enable_grad(), float32_compute(device):
        for i, (c, x) in enumerate(chunks):
            if i % world != rank:
                continue
            x = as_input(x, device)
            logits = model(x)
            if logits.ndim != 2 or logits.shape[1] != num_classes:
                raise ValueError(
                    f"model output has shape {tuple(logits.shape)}; expected (B, {num_classes})"
                )
            y = torch.full((x.shape[0],), c, dtype=torch.int64, device=logits.device)
            loss = F.cross_entropy(logits.float(), y, reduction="sum")
            grads = torch.autograd.grad(loss, tensors, allow_unused=True)
            for view, g in zip(views, grads, strict=True):
                if g is not None:  # None: parameter not on this graph, zero gradient
                    view[c].add_(g.reshape(-1).float())
            counts[c] += x.shape[0]
    if world > 1:
        dist.all_reduce(sums)
        n = torch.as_tensor(counts, device=device)
        dist.all_reduce(n)
        counts = n.cpu().numpy().astype(np.int64)

    grams = {}
    for (name, _), view in zip(params, views, strict=True):
        a = view.double()  # Gram in float64: sums of many products, cancellations in cosines
        grams[name] = (a @ a.T).cpu().numpy()
    return grams, counts, sums


def _cosine_from_gram(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cosine matrix, norms) from a Gram matrix; NaN where a norm is zero or NaN."""
    norms = np.sqrt(np.clip(np.diag(gram), 0.0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = np.outer(norms, norms)
        cos = np.where(denom > 0, gram / np.where(denom > 0, denom, 1.0), np.nan)
    cos = np.clip(cos, -1.0, 1.0)
    ok = np.flatnonzero(norms > 0)
    cos[ok, ok] = 1.0  # exact diagonal
    return cos, norms


def _finish(
    model: nn.Module,
    grams: dict[str, np.ndarray],
    counts: np.ndarray,
    layer_groups: bool,
    sums: Tensor | None = None,
) -> GCMResult:
    num_classes = counts.shape[0]
    missing = [c for c in range(num_classes) if counts[c] == 0]
    if missing:
        warnings.warn(
            f"gradient conflict: no examples of class(es) {missing}; their rows and columns "
            "are NaN",
            RuntimeWarning,
            stacklevel=3,
        )
    # Sum-of-loss gradients -> mean-loss gradients: G_mean[i, j] = G_sum[i, j] / (n_i * n_j).
    n = counts.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(np.outer(n, n) > 0, 1.0 / np.outer(n, n), np.nan)
    mean_grams = {name: g * scale for name, g in grams.items()}
    total = np.zeros((num_classes, num_classes))
    for g in mean_grams.values():
        total = total + g
    matrix, norms = _cosine_from_gram(total)
    result = GCMResult(
        matrix=matrix,
        norms=norms,
        counts=counts,
        classes_present=[c for c in range(num_classes) if counts[c] > 0],
        param_grams=mean_grams,
        sums=sums,
    )
    if layer_groups and callable(getattr(model, "layer_groups", None)):
        result.groups = {
            group: result.subset(names) for group, names in model.layer_groups().items()
        }
    return result


def gradient_conflict_matrix(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    num_classes: int,
    *,
    layer_groups: bool = True,
    batch_size: int = 64,
    distributed: bool = False,
    keep_sums: bool = False,
) -> GCMResult:
    """Gradient Conflict Matrix of ``model`` on the examples (inputs, targets).

    inputs: float images (N, ...) the model accepts; targets: (N,) class indices in
    [0, num_classes). Examples are grouped by class and run in class-pure chunks of at most
    ``batch_size`` in eval mode and float32 (autocast disabled), so the cost is about one
    forward+backward pass over the N examples. ``layer_groups``: also compute one matrix per
    ``model.layer_groups()`` group (skipped for models without that method).

    The model's train/eval flag of every submodule and every parameter's ``.grad`` are the same
    afterwards. A class without examples gives a NaN row and column and a RuntimeWarning.
    ``distributed``: under torchrun, with the same model and examples on every rank, the
    chunks are split over the ranks and their gradient sums all-reduced (the same matrix).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    targets = as_labels(targets, num_classes)
    if targets.shape[0] != inputs.shape[0]:
        raise ValueError(f"{inputs.shape[0]} inputs but {targets.shape[0]} targets")
    chunks = _chunks_from_tensors(inputs, targets, num_classes, batch_size)
    grams, counts, sums = _class_gradient_grams(model, chunks, num_classes, distributed)
    return _finish(model, grams, counts, layer_groups, sums if keep_sums else None)


def gradient_conflict_from_batches(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    num_classes: int,
    *,
    layer_groups: bool = True,
    batch_size: int = 64,
    max_buffered: int | None = None,
    distributed: bool = False,
    keep_sums: bool = False,
) -> GCMResult:
    """Gradient Conflict Matrix over a dataset given as (images, labels) batches.

    Same result as :func:`gradient_conflict_matrix` on the concatenated batches, without holding
    the dataset: examples are regrouped into class-pure chunks of ``batch_size`` through small
    per-class buffers (at most about ``max_buffered`` examples, default 4 * batch_size), and the
    per-class gradient sums accumulate across batches (memory O(C * parameters)). The batches
    should come without augmentation. ``distributed``: as for :func:`gradient_conflict_matrix`
    (every rank iterating the same batches).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    max_buffered = 4 * batch_size if max_buffered is None else max(1, int(max_buffered))
    chunks = _chunks_from_batches(batches, num_classes, batch_size, max_buffered)
    grams, counts, sums = _class_gradient_grams(model, chunks, num_classes, distributed)
    return _finish(model, grams, counts, layer_groups, sums if keep_sums else None)


# ---- branch specialisation -------------------------------------------------------------------


def branch_shares_from_result(
    result: GCMResult, branch_names: Sequence[Sequence[str]]
) -> BranchShares:
    """Branch norms and shares from a computed :class:`GCMResult` (no further passes).

    branch_names: per branch, its parameter names (attention included), e.g.
    ``model.branch_parameter_names()``.
    """
    norms = np.stack([result.subset(names).norms for names in branch_names], axis=1)  # (C, K)
    counts = np.asarray(result.counts)
    norms[counts == 0] = np.nan
    total = norms.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        shares = np.where(total > 0, norms / np.where(total > 0, total, 1.0), np.nan)
    return BranchShares(norms=norms, shares=shares)


def branch_gradient_shares(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    num_classes: int,
    *,
    batch_size: int = 64,
    result: GCMResult | None = None,
) -> BranchShares:
    """For each class c and branch k: ||g_c restricted to branch k's parameters|| and its share.

    Returns :class:`BranchShares` with ``norms`` and ``shares``, both (C, K); each row of shares
    sums to 1. Branches come from ``model.branch_parameter_names()``. Pass ``result`` (a
    :class:`GCMResult` of the same model and data) to reuse its gradients instead of recomputing.
    """
    names = getattr(model, "branch_parameter_names", None)
    if not callable(names):
        raise AttributeError(f"{type(model).__name__} has no branch_parameter_names()")
    if result is None:
        result = gradient_conflict_matrix(
            model, inputs, targets, num_classes, layer_groups=False, batch_size=batch_size
        )
    return branch_shares_from_result(result, names())
