"""From a conflict to its images (docs/diagnostics.md, "Per-example scores"): the rankings the
pages show, from a run's per-example scores (csba.diagnostics.examples), and the one accessor
every thumbnail is read through.

* :func:`pulling_against`: training images of class a whose gradient is the least aligned with
  (most against) class b's mean gradient;
* :func:`label_error_candidates`: per class, the images a chosen score ranks as likely label
  errors (self-influence highest first by default, own-class alignment or confidence lowest);
* :func:`agreement`: how much two runs' rankings agree (top-k overlap, Spearman correlation);
* :func:`confusion_cell`: the test images of a confusion-matrix cell (true a, predicted b),
  most confident first; :func:`right_wrong`: the images of a class one run gets right and
  another wrong;
* :func:`image`: ``image(bundle, split, index)`` -> (H, W, 3) uint8, the only way a view reads
  a picture, so streamed datasets can serve the same pages.
"""

from __future__ import annotations

import numpy as np

from .examples import ExampleScores

__all__ = [
    "RANKINGS",
    "agreement",
    "confusion_cell",
    "image",
    "label_error_candidates",
    "pulling_against",
    "ranking_values",
    "right_wrong",
]

# name -> (what it reads, highest first?): how candidate label errors are ranked
RANKINGS = {
    "self-influence": ("self_influence", True),
    "own-class alignment": ("own_alignment", False),
    "confidence in the label": ("confidence", False),
}


def ranking_values(scores: ExampleScores, ranking: str) -> np.ndarray:
    """(N,) values of a ranking, oriented so that larger = more suspicious (NaN last)."""
    try:
        field, high_first = RANKINGS[ranking]
    except KeyError:
        raise ValueError(
            f"unknown ranking {ranking!r}; choose one of {', '.join(RANKINGS)}"
        ) from None
    v = np.asarray(getattr(scores, field), dtype=np.float64)
    v = v if high_first else -v
    return np.where(np.isfinite(v), v, -np.inf)


def pulling_against(scores: ExampleScores, a: int, b: int, k: int = 12) -> np.ndarray:
    """Indices (into the split) of up to k images labelled ``a`` with the most negative
    alignment with class ``b``, most negative first (NaN alignments left out)."""
    idx = np.flatnonzero(scores.labels == a)
    vals = scores.alignment[idx, b].astype(np.float64)
    keep = np.isfinite(vals)
    idx, vals = idx[keep], vals[keep]
    return idx[np.argsort(vals, kind="stable")[:k]]


def label_error_candidates(
    scores: ExampleScores, ranking: str = "self-influence", k: int = 12, label: int | None = None
) -> np.ndarray:
    """Indices of the k images (of class ``label``, or all) the ranking finds most suspicious,
    most suspicious first."""
    v = ranking_values(scores, ranking)
    idx = np.arange(len(v)) if label is None else np.flatnonzero(scores.labels == label)
    return idx[np.argsort(-v[idx], kind="stable")[:k]]


def agreement(x: np.ndarray, y: np.ndarray, k: int) -> dict[str, float]:
    """Two runs' values over the same images (larger = higher rank): the share of the top k
    they share, and Spearman's rank correlation over every image both score."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape:
        raise ValueError(f"scores over different images: {x.shape} and {y.shape}")
    ok = np.isfinite(x) & np.isfinite(y)
    top_x = set(np.argsort(-np.where(ok, x, -np.inf), kind="stable")[:k].tolist())
    top_y = set(np.argsort(-np.where(ok, y, -np.inf), kind="stable")[:k].tolist())
    from scipy.stats import spearmanr

    rho = float(spearmanr(x[ok], y[ok]).statistic) if ok.sum() > 2 else float("nan")
    return {"top_k_overlap": len(top_x & top_y) / max(1, k), "spearman": rho, "k": int(k)}


def confusion_cell(
    y_true: np.ndarray, y_pred: np.ndarray, probs: np.ndarray, a: int, b: int, k: int | None = None
) -> np.ndarray:
    """Indices of the images of true class ``a`` predicted ``b`` (``y_pred`` as stored, the
    argmax of the unrounded ``probs`` (N, C)), highest probability of ``b`` first (ties: lower
    index first); at most ``k``."""
    y_true, y_pred, probs = np.asarray(y_true), np.asarray(y_pred), np.asarray(probs, float)
    idx = np.flatnonzero((y_true == a) & (y_pred == b))
    return idx[np.argsort(-probs[idx, b], kind="stable")][:k]


def right_wrong(
    y_true: np.ndarray,
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    probs_a: np.ndarray,
    cls: int,
    k: int | None = None,
) -> np.ndarray:
    """Indices of the images of true class ``cls`` that run A (predictions ``pred_a``, (N,)
    and ``probs_a`` (N, C)) classifies right and run B (``pred_b``) wrong, A's confidence in
    the label highest first; at most ``k``."""
    y_true, pa, pb = np.asarray(y_true), np.asarray(pred_a), np.asarray(pred_b)
    if not len(y_true) == len(pa) == len(pb) == len(probs_a):
        raise ValueError(f"predictions over different images: {len(pa)} and {len(pb)}")
    idx = np.flatnonzero((y_true == cls) & (pa == cls) & (pb != cls))
    return idx[np.argsort(-np.asarray(probs_a, float)[idx, cls], kind="stable")][:k]


def image(bundle, split: str, index: int) -> np.ndarray:
    """Image ``index`` of ``split`` ("train", "val" or "test") as (H, W, 3) uint8, as the model
    saw it before normalisation; ValueError for an unknown split or an index out of range."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"unknown split {split!r}; choose train, val or test")
    images = bundle.split(split).images
    if not isinstance(index, (int, np.integer)) or not 0 <= int(index) < len(images):
        raise ValueError(f"no image {index!r} in the {split} split ({len(images)} images)")
    x = images[int(index)]  # (c, S, S) uint8
    x = x.expand(3, -1, -1) if x.shape[0] == 1 else x
    return x.permute(1, 2, 0).contiguous().numpy()
