"""Statistics for imbalanced classification: bootstrap intervals, seed aggregation, tables.

Every metric on a small, imbalanced test set (ELPV: 656 test images, the rarest class about 27)
is noisy, so the functions here attach a percentile bootstrap interval to each number.

Conventions (shared by every function in this module):

* Labels are integers in ``range(num_classes)``; ``C`` is ``num_classes``.
* Confusion matrices are ``cm[true, pred]`` (rows: true class, columns: predicted class), as
  ``sklearn.metrics.confusion_matrix(labels=range(C))``.
* Zero division gives 0 (sklearn ``zero_division=0``): the precision of a class that is never
  predicted is 0, the recall of a class without support is 0, and so is its F1.
* ``macro_f1`` is the unweighted mean of the F1 of all ``C`` classes, i.e.
  ``f1_score(y_true, y_pred, labels=range(C), average="macro", zero_division=0)``; when every
  class occurs in ``y_true`` this equals sklearn's default ``average="macro"``.
* ``balanced_accuracy`` is the mean recall over the classes that occur in ``y_true``, exactly as
  ``sklearn.metrics.balanced_accuracy_score``.
* Intervals are percentile intervals (``level`` 0.95 -> 2.5th and 97.5th percentiles, numpy's
  default linear interpolation) of the metric over ``n_resamples`` bootstrap resamples of the
  test set. Resampling is stratified by default: indices are drawn with replacement *within*
  each true class, so each class keeps its support in every resample.

Pure numpy + scikit-learn + pandas; no torch, no streamlit.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix

__all__ = [
    "BOOT_SEED",
    "DELTA_COLUMNS",
    "METRIC_NAMES",
    "N_RESAMPLES",
    "OVERALL_METRICS",
    "PER_CLASS_METRICS",
    "aggregate_metric_dicts",
    "aggregate_seeds",
    "bootstrap_metrics",
    "bootstrap_p_value",
    "bootstrap_seed_mean",
    "confusion_from_predictions",
    "delta_table",
    "holm",
    "metrics_from_confusion",
    "paired_bootstrap_diff",
    "per_class_table",
    "seed_table",
    "summary_table",
    "to_latex_tabular",
]

OVERALL_METRICS: tuple[str, ...] = ("accuracy", "macro_f1", "balanced_accuracy")
PER_CLASS_METRICS: tuple[str, ...] = ("precision", "recall", "f1")
METRIC_NAMES: tuple[str, ...] = OVERALL_METRICS + PER_CLASS_METRICS

# The published numbers' bootstrap (report, compare, pair; docs/results.md): pages default to
# the same resample count and seed, so a number on a page equals the one in the docs.
N_RESAMPLES = 2000
BOOT_SEED = 0

# Upper bound on the number of (resample, example) cells handled at once when building the batch
# of confusion matrices: keeps temporaries to a few tens of MB even for 10,000 test images.
_CHUNK_CELLS = 4_000_000


# --------------------------------------------------------------------------------------------
# Input checking and confusion matrices
# --------------------------------------------------------------------------------------------


def _as_labels(y: Any, num_classes: int, name: str) -> np.ndarray:
    """Return ``y`` as a 1-D int64 array of labels in ``range(num_classes)`` or raise."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    is_int = np.issubdtype(arr.dtype, np.integer)
    if arr.size and not is_int and not np.all(np.equal(np.mod(arr, 1), 0)):
        raise ValueError(f"{name} must hold integer class labels")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(
            f"{name} holds labels outside 0..{num_classes - 1} (min {arr.min()}, max {arr.max()})"
        )
    return arr


def _check_inputs(
    y_true: Any, preds: Sequence[Any], num_classes: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Validate ``y_true`` and one or more prediction arrays of the same length."""
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    yt = _as_labels(y_true, num_classes, "y_true")
    if yt.size == 0:
        raise ValueError("y_true is empty: there is nothing to evaluate")
    out = []
    for i, p in enumerate(preds):
        yp = _as_labels(p, num_classes, f"predictions #{i}")
        if yp.shape != yt.shape:
            raise ValueError(f"predictions #{i} have length {yp.size}, y_true has {yt.size}")
        out.append(yp)
    return yt, out


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level!r}")


def confusion_from_predictions(y_true: Any, y_pred: Any, num_classes: int) -> np.ndarray:
    """Confusion matrix ``cm[true, pred]`` of shape (C, C), int64, over all ``C`` labels.

    Classes that occur in neither array still get their (all-zero) row and column.
    """
    yt, (yp,) = _check_inputs(y_true, [y_pred], num_classes)
    if num_classes == 1:  # sklearn warns about a "single label" even when labels is given
        return np.array([[yt.size]], dtype=np.int64)
    cm = confusion_matrix(yt, yp, labels=np.arange(num_classes))
    return cm.astype(np.int64, copy=False)


def metrics_from_confusion(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics from one confusion matrix (C, C) or a batch of them (..., C, C).

    Returns a dict of float arrays: ``accuracy``, ``macro_f1``, ``balanced_accuracy`` with the
    batch shape ``(...)`` and ``precision``, ``recall``, ``f1``, ``support`` with shape
    ``(..., C)``. Zero division gives 0 (see the module docstring).
    """
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim < 2 or cm.shape[-1] != cm.shape[-2]:
        raise ValueError(f"confusion matrices must have shape (..., C, C), got {cm.shape}")
    tp = np.diagonal(cm, axis1=-2, axis2=-1)  # (..., C)
    support = cm.sum(axis=-1)  # true count per class, (..., C)
    predicted = cm.sum(axis=-2)  # predicted count per class, (..., C)
    total = support.sum(axis=-1)  # (...)

    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        # F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (predicted + support); 0 when both are 0.
        denom = predicted + support
        f1 = np.where(denom > 0, 2.0 * tp / denom, 0.0)
        accuracy = np.where(total > 0, tp.sum(axis=-1) / total, 0.0)
        # Balanced accuracy: mean recall over the classes present in y_true (as sklearn).
        present = support > 0
        n_present = present.sum(axis=-1)
        balanced = np.where(
            n_present > 0, np.where(present, recall, 0.0).sum(axis=-1) / n_present, 0.0
        )
    return {
        "accuracy": accuracy,
        "macro_f1": f1.mean(axis=-1),
        "balanced_accuracy": balanced,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support,
    }


# --------------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------------


def _resample_indices(
    y_true: Any, n_resamples: int, seed: int | None = 0, stratified: bool = True
) -> np.ndarray:
    """Bootstrap indices into the test set, shape (n_resamples, N), int64.

    Stratified: for every class ``c`` with positions ``pos_c`` in ``y_true``, the columns
    ``pos_c`` of each row hold ``len(pos_c)`` draws with replacement from ``pos_c``, so every
    resample has exactly the original class supports. Otherwise each row is ``N`` draws with
    replacement from ``range(N)``. Seeded with ``numpy.random.default_rng(seed)``; both the
    vectorised path and the reference loop in the tests use this function.
    """
    yt = np.asarray(y_true).astype(np.int64, copy=False)
    n = yt.size
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples!r}")
    rng = np.random.default_rng(seed)
    if not stratified:
        return rng.integers(0, n, size=(n_resamples, n), dtype=np.int64)
    out = np.empty((n_resamples, n), dtype=np.int64)
    for c in np.unique(yt):  # sorted, so the draw order is fixed for a given y_true
        pos = np.flatnonzero(yt == c)
        draws = rng.integers(0, pos.size, size=(n_resamples, pos.size), dtype=np.int64)
        out[:, pos] = pos[draws]
    return out


def _confusion_batch(
    y_true: np.ndarray, y_pred: np.ndarray, indices: np.ndarray, num_classes: int
) -> np.ndarray:
    """Confusion matrices of all resamples at once, shape (R, C, C), int64.

    Each (resample r, example i) cell is coded as ``r*C*C + true*C + pred`` and counted with a
    single ``np.bincount``; the resamples are processed in chunks to bound memory.
    """
    c2 = num_classes * num_classes
    codes = y_true * num_classes + y_pred  # (N,) cell of each example in a C x C matrix
    r_total, n = indices.shape
    out = np.empty((r_total, c2), dtype=np.int64)
    step = max(1, _CHUNK_CELLS // max(n, 1))
    for start in range(0, r_total, step):
        idx = indices[start : start + step]  # (r, N)
        r = idx.shape[0]
        flat = codes[idx] + (np.arange(r, dtype=np.int64) * c2)[:, None]  # (r, N)
        out[start : start + r] = np.bincount(flat.ravel(), minlength=r * c2).reshape(r, c2)
    return out.reshape(r_total, num_classes, num_classes)


def _interval(samples: np.ndarray, level: float) -> np.ndarray:
    """Percentile interval over axis 0: returns (2, ...) with lower and upper bounds."""
    alpha = (1.0 - level) / 2.0
    return np.percentile(samples, [100.0 * alpha, 100.0 * (1.0 - alpha)], axis=0)


def _entry(value: float, bounds: np.ndarray) -> dict[str, Any]:
    # Plain Python floats so the result is JSON-serialisable as is.
    return {"value": float(value), "ci": [float(bounds[0]), float(bounds[1])]}


def _package(
    point: Mapping[str, np.ndarray],
    samples: Mapping[str, np.ndarray],
    support: np.ndarray,
    level: float,
    config: dict[str, Any],
) -> dict[str, Any]:
    """Arrange point values and bootstrap samples into the documented result dict."""
    result: dict[str, Any] = {}
    for name in OVERALL_METRICS:
        result[name] = _entry(point[name], _interval(samples[name], level))
    bounds = {name: _interval(samples[name], level) for name in PER_CLASS_METRICS}  # (2, C)
    per_class = []
    for c in range(len(support)):
        row: dict[str, Any] = {
            name: _entry(point[name][c], bounds[name][:, c]) for name in PER_CLASS_METRICS
        }
        row["support"] = int(support[c])
        per_class.append(row)
    result["per_class"] = per_class
    result["config"] = config
    return result


def _config(
    yt: np.ndarray,
    num_classes: int,
    n_resamples: int,
    seed: int | None,
    level: float,
    stratified: bool,
) -> dict[str, Any]:
    """The ``config`` entry of every bootstrap result (plain Python values)."""
    return {
        "n": int(yt.size),
        "num_classes": int(num_classes),
        "n_resamples": int(n_resamples),
        "seed": seed,
        "level": float(level),
        "stratified": bool(stratified),
    }


def bootstrap_metrics(
    y_true: Any,
    y_pred: Any,
    num_classes: int,
    n_resamples: int = 2000,
    seed: int | None = 0,
    level: float = 0.95,
    stratified: bool = True,
) -> dict[str, Any]:
    """Point values and percentile bootstrap intervals of the classification metrics.

    Args:
        y_true, y_pred: integer labels in ``range(num_classes)``, shape (N,).
        num_classes: C; classes absent from the data still get a per-class entry.
        n_resamples: number of bootstrap resamples R.
        seed: seed of ``numpy.random.default_rng``; the same seed gives the same intervals.
        level: coverage of the interval, e.g. 0.95 for the 2.5th..97.5th percentiles.
        stratified: resample within each true class (class supports stay fixed).

    Returns:
        ``{"accuracy": {"value": v, "ci": [lo, hi]}, "macro_f1": {...},
        "balanced_accuracy": {...}, "per_class": [{"precision": {"value", "ci"},
        "recall": {...}, "f1": {...}, "support": n_c}, ... one per class],
        "config": {"n": N, "num_classes": C, "n_resamples": R, "seed": seed, "level": level,
        "stratified": stratified}}``. Point values are the metrics on the full test set
        (equal to sklearn's); all numbers are plain Python floats/ints.

    Runs in well under a second for N = 656, R = 2000, C = 4: the R confusion matrices are
    built with one ``bincount`` and all metrics are computed on the (R, C, C) batch at once.
    """
    _check_level(level)
    yt, (yp,) = _check_inputs(y_true, [y_pred], num_classes)
    indices = _resample_indices(yt, n_resamples, seed, stratified)
    samples = metrics_from_confusion(_confusion_batch(yt, yp, indices, num_classes))
    point = metrics_from_confusion(confusion_from_predictions(yt, yp, num_classes))
    config = _config(yt, num_classes, n_resamples, seed, level, stratified)
    return _package(point, samples, point["support"], level, config)


def paired_bootstrap_diff(
    y_true: Any,
    pred_a: Any,
    pred_b: Any,
    num_classes: int,
    n_resamples: int = 2000,
    seed: int | None = 0,
    level: float = 0.95,
    stratified: bool = True,
) -> dict[str, Any]:
    """Paired bootstrap of the difference ``metric(b) - metric(a)`` on the same test set.

    Both prediction arrays are evaluated on the *same* resample indices, so the interval
    reflects the difference between the runs, not the noise of the test set shared by both.
    The result has the structure of :func:`bootstrap_metrics` (values are differences, which
    lie in [-1, 1]); a run compared with itself gives value 0 and interval [0, 0] everywhere.
    An interval that excludes 0 marks a difference that is significant at ``level``.
    """
    _check_level(level)
    yt, (pa, pb) = _check_inputs(y_true, [pred_a, pred_b], num_classes)
    indices = _resample_indices(yt, n_resamples, seed, stratified)
    sa = metrics_from_confusion(_confusion_batch(yt, pa, indices, num_classes))
    sb = metrics_from_confusion(_confusion_batch(yt, pb, indices, num_classes))
    qa = metrics_from_confusion(confusion_from_predictions(yt, pa, num_classes))
    qb = metrics_from_confusion(confusion_from_predictions(yt, pb, num_classes))
    names = OVERALL_METRICS + PER_CLASS_METRICS
    point = {k: qb[k] - qa[k] for k in names}
    samples = {k: sb[k] - sa[k] for k in names}
    config = {
        **_config(yt, num_classes, n_resamples, seed, level, stratified),
        "difference": "b - a",
    }
    return _package(point, samples, qa["support"], level, config)


# --------------------------------------------------------------------------------------------
# Aggregation over seeds
# --------------------------------------------------------------------------------------------


def aggregate_seeds(values: Sequence[float]) -> dict[str, float | int]:
    """Summary of one metric over runs that differ only by seed.

    Returns ``{"mean", "std", "min", "max", "n"}``; ``std`` is the sample standard deviation
    (ddof=1), defined as 0.0 for a single run. An empty list gives NaN statistics and n = 0.
    NaN inputs propagate to mean/std/min/max (a missing metric should not go unnoticed).
    """
    arr = np.asarray(list(values), dtype=np.float64).ravel()
    n = int(arr.size)
    if n == 0:
        nan = float("nan")
        return {"mean": nan, "std": nan, "min": nan, "max": nan, "n": 0}
    std = float(np.std(arr, ddof=1)) if n > 1 else (0.0 if np.isfinite(arr[0]) else float("nan"))
    return {
        "mean": float(np.mean(arr)),
        "std": std,
        "min": float(np.min(arr)),
        "max": float(np.max(arr)),
        "n": n,
    }


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def aggregate_metric_dicts(dicts: Sequence[Any]) -> Any:
    """Aggregate whole (nested) metric dicts across runs that differ only by seed.

    Walks the structure of the first dict; every numeric leaf becomes
    :func:`aggregate_seeds` over the runs, and every ``{"value": v, "ci": [...]}`` entry (as
    returned by :func:`bootstrap_metrics`) becomes the aggregate of its ``value``. Lists are
    aggregated element-wise; other leaves (strings, booleans, None) are kept when equal in all
    runs. Works for flat dicts such as ``{"accuracy": 0.8, "macro_f1": 0.6}`` as well.

    Raises ValueError when the runs do not share the same structure.
    """
    items = list(dicts)
    if not items:
        raise ValueError("aggregate_metric_dicts needs at least one metric dict")
    return _aggregate_node(items, path="")


def _aggregate_node(nodes: list[Any], path: str) -> Any:
    first = nodes[0]
    where = path or "<root>"
    if isinstance(first, Mapping):
        if not all(isinstance(n, Mapping) for n in nodes):
            raise ValueError(f"runs differ in structure at {where}")
        if "value" in first and "ci" in first:
            return aggregate_seeds([_leaf_number(n.get("value"), f"{path}.value") for n in nodes])
        keys = list(first.keys())
        for n in nodes[1:]:
            if set(n.keys()) != set(keys):
                raise ValueError(f"runs differ in keys at {where}: {sorted(map(str, keys))}")
        return {k: _aggregate_node([n[k] for n in nodes], f"{path}.{k}") for k in keys}
    if isinstance(first, (list, tuple)):
        if not all(isinstance(n, (list, tuple)) and len(n) == len(first) for n in nodes):
            raise ValueError(f"runs differ in list length at {where}")
        return [_aggregate_node([n[i] for n in nodes], f"{path}[{i}]") for i in range(len(first))]
    if _is_number(first):
        return aggregate_seeds([_leaf_number(n, path) for n in nodes])
    if all(n == first for n in nodes[1:]):
        return first
    raise ValueError(f"runs differ in a non-numeric entry at {where}")


def _leaf_number(x: Any, path: str) -> float:
    if not _is_number(x):
        raise ValueError(f"expected a number at {path or '<root>'}, got {x!r}")
    return float(x)


# --------------------------------------------------------------------------------------------
# Tables (CLI `compare`, dashboard "Per-class F1" page)
# --------------------------------------------------------------------------------------------


def _run_arrays(run: Mapping[str, Any]) -> tuple[str, list[str], np.ndarray, np.ndarray]:
    """Unpack a run dict ``{"name", "classes", "y_true", "y_pred"}`` and validate it."""
    for key in ("name", "classes", "y_true", "y_pred"):
        if key not in run:
            raise ValueError(f"run is missing the key {key!r}")
    classes = [str(c) for c in run["classes"]]
    yt, (yp,) = _check_inputs(run["y_true"], [run["y_pred"]], len(classes))
    return str(run["name"]), classes, yt, yp


def per_class_table(
    runs: Sequence[Mapping[str, Any]],
    n_resamples: int = 2000,
    seed: int | None = 0,
    level: float = 0.95,
    stratified: bool = True,
) -> pd.DataFrame:
    """Long table of per-class precision, recall and F1 with bootstrap intervals (Tables 7/12/13).

    Each run is ``{"name": str, "classes": [names], "y_true": (N,), "y_pred": (N,)}``.
    Columns: ``run, class, metric, value, ci_low, ci_high, support``; one row per
    (run, class, metric) with metric in ``precision, recall, f1``.
    """
    rows = []
    for run in runs:
        name, classes, yt, yp = _run_arrays(run)
        res = bootstrap_metrics(yt, yp, len(classes), n_resamples, seed, level, stratified)
        for cname, entry in zip(classes, res["per_class"], strict=True):
            for metric in PER_CLASS_METRICS:
                rows.append(
                    {
                        "run": name,
                        "class": cname,
                        "metric": metric,
                        "value": entry[metric]["value"],
                        "ci_low": entry[metric]["ci"][0],
                        "ci_high": entry[metric]["ci"][1],
                        "support": entry["support"],
                    }
                )
    columns = ["run", "class", "metric", "value", "ci_low", "ci_high", "support"]
    return pd.DataFrame(rows, columns=columns)


def _reference_index(runs: Sequence[Mapping[str, Any]], reference: int | str) -> int:
    if isinstance(reference, str):
        names = [str(r.get("name")) for r in runs]
        if reference not in names:
            raise ValueError(f"reference run {reference!r} not among {names}")
        return names.index(reference)
    if not -len(runs) <= reference < len(runs):
        raise ValueError(f"reference index {reference} out of range for {len(runs)} runs")
    return reference % len(runs)


# Columns of every delta table (delta_table here, the dashboard's seed-mean deltas).
DELTA_COLUMNS = [
    "run",
    "reference",
    "class",
    "metric",
    "delta",
    "ci_low",
    "ci_high",
    "significant",
]


def delta_table(
    runs: Sequence[Mapping[str, Any]],
    reference: int | str = 0,
    n_resamples: int = 2000,
    seed: int | None = 0,
    level: float = 0.95,
    stratified: bool = True,
    include_overall: bool = False,
) -> pd.DataFrame:
    """Per-class ΔF1, ΔP, ΔR of every run against a reference run, with paired intervals.

    ``reference`` is an index into ``runs`` or a run name. All runs must share the reference's
    ``y_true`` (same test set, same order) and class names, since the bootstrap is paired.
    Columns: ``run, reference, class, metric, delta, ci_low, ci_high, significant`` where
    ``delta = metric(run) - metric(reference)`` and ``significant`` is True when the interval
    excludes 0. With ``include_overall`` the rows for accuracy, macro_f1 and balanced_accuracy
    are added with class ``"(overall)"``. The reference run itself gets no rows.
    """
    runs = list(runs)
    if not runs:
        return pd.DataFrame(columns=DELTA_COLUMNS)
    ref_i = _reference_index(runs, reference)
    ref_name, ref_classes, ref_true, ref_pred = _run_arrays(runs[ref_i])
    rows = []
    for i, run in enumerate(runs):
        if i == ref_i:
            continue
        name, classes, yt, yp = _run_arrays(run)
        if classes != ref_classes:
            raise ValueError(f"run {name!r} has classes {classes}, reference has {ref_classes}")
        if not np.array_equal(yt, ref_true):
            raise ValueError(
                f"run {name!r} was evaluated on a different test set than {ref_name!r}; "
                "a paired comparison needs the same y_true in the same order"
            )
        res = paired_bootstrap_diff(
            yt, ref_pred, yp, len(classes), n_resamples, seed, level, stratified
        )
        if include_overall:
            for metric in OVERALL_METRICS:
                rows.append(_delta_row(name, ref_name, "(overall)", metric, res[metric]))
        for cname, entry in zip(classes, res["per_class"], strict=True):
            for metric in PER_CLASS_METRICS:
                rows.append(_delta_row(name, ref_name, cname, metric, entry[metric]))
    return pd.DataFrame(rows, columns=DELTA_COLUMNS)


def _delta_row(
    run: str, ref: str, cname: str, metric: str, entry: Mapping[str, Any]
) -> dict[str, Any]:
    lo, hi = entry["ci"]
    return {
        "run": run,
        "reference": ref,
        "class": cname,
        "metric": metric,
        "delta": entry["value"],
        "ci_low": lo,
        "ci_high": hi,
        "significant": bool(lo > 0.0 or hi < 0.0),
    }


def summary_table(
    runs: Sequence[Mapping[str, Any]],
    n_resamples: int = 2000,
    seed: int | None = 0,
    level: float = 0.95,
    stratified: bool = True,
) -> pd.DataFrame:
    """One row per run: accuracy, macro-F1 and balanced accuracy with bootstrap intervals.

    Columns: ``run, n``, then for each metric ``m`` in accuracy, macro_f1, balanced_accuracy:
    ``m, m_ci_low, m_ci_high``.
    """
    columns = ["run", "n"]
    for m in OVERALL_METRICS:
        columns += [m, f"{m}_ci_low", f"{m}_ci_high"]
    rows = []
    for run in runs:
        name, classes, yt, yp = _run_arrays(run)
        res = bootstrap_metrics(yt, yp, len(classes), n_resamples, seed, level, stratified)
        row: dict[str, Any] = {"run": name, "n": int(yt.size)}
        for m in OVERALL_METRICS:
            row[m] = res[m]["value"]
            row[f"{m}_ci_low"], row[f"{m}_ci_high"] = res[m]["ci"]
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


_SEED_SUFFIX = re.compile(r"-s\d+$")


def _variant_of(run: Mapping[str, Any]) -> str:
    """The run's ``variant`` key, else its name without a ``-s<seed>`` suffix."""
    if run.get("variant") is not None:
        return str(run["variant"])
    return _SEED_SUFFIX.sub("", str(run["name"]))


def seed_table(runs_with_variant: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Mean, std (ddof=1), min, max over seeds of each variant's metrics.

    Runs are grouped by their ``"variant"`` key (falling back to the run name without a
    ``-s<seed>`` suffix, the checkpoint folder convention). Point metrics are computed on each
    run's full test set (no bootstrap). Columns: ``variant, class, metric, mean, std, min, max,
    n, runs``; class is ``"(overall)"`` for accuracy, macro_f1 and balanced_accuracy, else the
    class name for precision, recall and f1. Runs of one variant must share class names.
    """
    groups: dict[str, list[tuple[str, list[str], dict[str, np.ndarray]]]] = {}
    for run in runs_with_variant:
        name, classes, yt, yp = _run_arrays(run)
        point = metrics_from_confusion(confusion_from_predictions(yt, yp, len(classes)))
        groups.setdefault(_variant_of(run), []).append((name, classes, point))
    columns = ["variant", "class", "metric", "mean", "std", "min", "max", "n", "runs"]
    rows = []
    for variant, members in groups.items():
        classes = members[0][1]
        if any(m[1] != classes for m in members):
            raise ValueError(f"runs of variant {variant!r} have different class names")
        names = ", ".join(m[0] for m in members)
        for metric in OVERALL_METRICS:
            agg = aggregate_seeds([float(m[2][metric]) for m in members])
            rows.append(
                {"variant": variant, "class": "(overall)", "metric": metric, **agg, "runs": names}
            )
        for c, cname in enumerate(classes):
            for metric in PER_CLASS_METRICS:
                agg = aggregate_seeds([float(m[2][metric][c]) for m in members])
                rows.append(
                    {"variant": variant, "class": cname, "metric": metric, **agg, "runs": names}
                )
    return pd.DataFrame(rows, columns=columns)


# --------------------------------------------------------------------------------------------
# LaTeX
# --------------------------------------------------------------------------------------------

_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "Δ": r"$\Delta$",
}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIALS.get(ch, ch) for ch in text)


def _latex_cell(x: Any, float_format: str) -> str:
    if x is None:
        return "--"
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (float, np.floating)):
        return "--" if math.isnan(x) else _latex_escape(float_format.format(float(x)))
    return _latex_escape(str(x))


def _is_numeric_column(col: pd.Series) -> bool:
    # Booleans count as numeric for pandas but are rendered as yes/no text.
    return pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)


def to_latex_tabular(
    df: pd.DataFrame,
    float_format: str = "{:.3f}",
    column_format: str | None = None,
    booktabs: bool = True,
    index: bool = False,
) -> str:
    r"""Render a DataFrame as a complete ``\begin{tabular} ... \end{tabular}`` environment.

    Text is escaped for LaTeX (``_ % & $ # { } ~ ^ \``; ``Δ`` becomes ``$\Delta$``), floats use
    ``float_format``, NaN and None become ``--``, booleans ``yes``/``no``. Numeric columns are
    right-aligned, the others left-aligned, unless ``column_format`` is given. With
    ``booktabs`` the rules are ``\toprule/\midrule/\bottomrule`` (needs the booktabs package),
    otherwise ``\hline``. The result starts with ``\begin{tabular}`` and ends with
    ``\end{tabular}`` (no trailing newline).
    """
    frame = df.reset_index() if index else df
    if column_format is None:
        column_format = "".join(
            "r" if _is_numeric_column(frame[col]) else "l" for col in frame.columns
        )
    top, mid, bottom = (r"\toprule", r"\midrule", r"\bottomrule") if booktabs else (r"\hline",) * 3
    lines = [rf"\begin{{tabular}}{{{column_format}}}", top]
    lines.append(" & ".join(_latex_escape(str(c)) for c in frame.columns) + r" \\")
    lines.append(mid)
    for row in frame.itertuples(index=False, name=None):
        lines.append(" & ".join(_latex_cell(x, float_format) for x in row) + r" \\")
    lines += [bottom, r"\end{tabular}"]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Bootstrap of seed means (README results: several seeds of a variant on one test set)
# --------------------------------------------------------------------------------------------


def bootstrap_seed_mean(
    y_true: Any,
    preds: Sequence[Any],
    num_classes: int,
    n_resamples: int = 2000,
    seed: int | None = 0,
    level: float = 0.95,
    stratified: bool = True,
    reference: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """Bootstrap interval of a metric averaged over several runs (seeds) on one test set.

    ``preds`` holds one prediction array per run. Every run is evaluated on the *same*
    resample indices and the metric is averaged over the runs in each resample, so the
    interval describes the test-set uncertainty of the seed mean (the spread between seeds is
    a separate number: :func:`aggregate_seeds`). With ``reference`` (another list of prediction
    arrays on the same test set) the result is the paired difference
    ``mean(metric(preds)) - mean(metric(reference))``. The result has the structure of
    :func:`bootstrap_metrics`; with a single run and no reference it equals that function's
    result for the same seed.
    """
    _check_level(level)
    group = list(preds)
    ref = list(reference) if reference is not None else []
    if not group:
        raise ValueError("bootstrap_seed_mean needs at least one prediction array")
    if reference is not None and not ref:
        raise ValueError("the reference group holds no prediction arrays")
    yt, arrays = _check_inputs(y_true, group + ref, num_classes)
    indices = _resample_indices(yt, n_resamples, seed, stratified)
    names = OVERALL_METRICS + PER_CLASS_METRICS

    def mean_over(arrs: list[np.ndarray]) -> tuple[dict, dict]:
        # Accumulate one run at a time so memory stays at one (R, C, C) batch.
        point = {k: 0.0 for k in names}
        samples = {k: 0.0 for k in names}
        for yp in arrs:
            q = metrics_from_confusion(confusion_from_predictions(yt, yp, num_classes))
            s = metrics_from_confusion(_confusion_batch(yt, yp, indices, num_classes))
            for k in names:
                point[k] = point[k] + q[k] / len(arrs)
                samples[k] = samples[k] + s[k] / len(arrs)
        return point, samples

    point, samples = mean_over(arrays[: len(group)])
    if ref:
        ref_point, ref_samples = mean_over(arrays[len(group) :])
        point = {k: point[k] - ref_point[k] for k in names}
        samples = {k: samples[k] - ref_samples[k] for k in names}
    support = np.bincount(yt, minlength=num_classes).astype(np.float64)
    config = {
        **_config(yt, num_classes, n_resamples, seed, level, stratified),
        "runs": len(group),
        "reference_runs": len(ref),
    }
    if ref:
        config["difference"] = "mean(preds) - mean(reference)"
    result = _package(point, samples, support, level, config)
    if ref:  # two-sided bootstrap p-value of "no difference", per overall metric
        result["p_value"] = {k: bootstrap_p_value(samples[k]) for k in OVERALL_METRICS}
    return result


def bootstrap_p_value(samples: Any) -> float:
    """Two-sided bootstrap p-value of a difference being zero: twice the smaller share of
    resampled differences on either side of zero (ties count on both sides), at most 1."""
    s = np.asarray(samples, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return float("nan")
    return float(min(1.0, 2.0 * min(np.mean(s <= 0), np.mean(s >= 0))))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down; monotone; in the input order). A
    hypothesis is rejected at level alpha when its adjusted p-value is at most alpha."""
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    order = np.argsort(p, kind="mergesort")
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()
