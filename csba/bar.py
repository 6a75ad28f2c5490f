"""The shipping bar: does every shipped run reach accuracy and macro-F1 thresholds?

A run's accuracy and macro-F1 on a small test set (ELPV: 656 images) move by a few hundredths
from one test set to another, so a run is judged against the thresholds with its own bootstrap
interval (:func:`bar_check`, :func:`bar_check_runs`), and a set of runs against the shipping bar
(:func:`shipping_bar`):

    no run clearly misses accuracy 0.60 or macro-F1 0.45 (its own 95% bootstrap interval lies
    wholly below a threshold) and every variant's seed-mean macro-F1 is at least 0.45.

Conventions (labels, intervals, stratified resampling) are those of :mod:`csba.stats`; the
functions are re-exported there. Pure numpy; no torch, no streamlit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .stats import (
    _check_inputs,
    _check_level,
    _config,
    _confusion_batch,
    _entry,
    _interval,
    _resample_indices,
    confusion_from_predictions,
    metrics_from_confusion,
)

__all__ = ["BAR_STATUSES", "SHIPPING_BAR", "bar_check", "bar_check_runs", "shipping_bar"]

# (accuracy, macro-F1) thresholds of the shipping bar for ELPV runs (decided by the owner).
SHIPPING_BAR: tuple[float, float] = (0.60, 0.45)

BAR_STATUSES: tuple[str, ...] = ("clearly meets", "meets", "misses within noise", "clearly misses")


def _bar_one(
    yt: np.ndarray,
    yp: np.ndarray,
    indices: np.ndarray,
    num_classes: int,
    bars: Mapping[str, float],
    level: float,
) -> tuple[dict[str, Any], np.ndarray]:
    """One run's bar status and the (R,) bool array of resamples in which it meets the bar."""
    samples = metrics_from_confusion(_confusion_batch(yt, yp, indices, num_classes))
    point = metrics_from_confusion(confusion_from_predictions(yt, yp, num_classes))
    out: dict[str, Any] = {}
    lows, highs, reached = [], [], []
    for name, threshold in bars.items():
        bounds = _interval(samples[name], level)
        out[name] = _entry(point[name], bounds)
        lows.append(bounds[0] >= threshold)
        highs.append(bounds[1] >= threshold)
        reached.append(point[name] >= threshold)
    meets = all(reached)
    if meets:
        status = "clearly meets" if all(lows) else "meets"
    else:
        status = "misses within noise" if all(highs) else "clearly misses"
    both = np.logical_and.reduce([samples[k] >= t for k, t in bars.items()])  # (R,)
    out.update(meets=bool(meets), status=status, share=float(both.mean()))
    return out, both


def _bars(bar_accuracy: float, bar_macro_f1: float) -> dict[str, float]:
    for name, value in (("bar_accuracy", bar_accuracy), ("bar_macro_f1", bar_macro_f1)):
        if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
            raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return {"accuracy": float(bar_accuracy), "macro_f1": float(bar_macro_f1)}


def bar_check(
    y_true: Any,
    y_pred: Any,
    num_classes: int,
    bar_accuracy: float,
    bar_macro_f1: float,
    n_resamples: int = 2000,
    seed: int | None = 0,
    level: float = 0.95,
    stratified: bool = True,
) -> dict[str, Any]:
    """Whether one run reaches a per-run bar, and whether its test set can tell.

    The bar is met when accuracy >= ``bar_accuracy`` and macro-F1 >= ``bar_macro_f1`` (the
    point values on the whole test set). The intervals are those of :func:`bootstrap_metrics`
    with the same arguments, so a run's status reads:

    * ``"clearly meets"``: both lower bounds reach their thresholds;
    * ``"meets"``: both point values do, but an interval reaches below a threshold;
    * ``"misses within noise"``: a point value is below its threshold, but every upper bound
      reaches its threshold (the test set cannot tell the run from one that meets the bar);
    * ``"clearly misses"``: an upper bound is below its threshold.

    Returns ``{"accuracy": {"value", "ci"}, "macro_f1": {"value", "ci"}, "meets": bool,
    "status": one of BAR_STATUSES, "share": fraction of resamples in which both thresholds are
    reached, "bar": {"accuracy", "macro_f1"}, "config": {...}}``; plain Python numbers.
    """
    res = bar_check_runs(
        y_true,
        [y_pred],
        num_classes,
        bar_accuracy,
        bar_macro_f1,
        n_resamples,
        seed,
        level,
        stratified,
    )
    return res["runs"][0] | {"bar": res["bar"]}


def bar_check_runs(
    y_true: Any,
    preds: Sequence[Any],
    num_classes: int,
    bar_accuracy: float,
    bar_macro_f1: float,
    n_resamples: int = 2000,
    seed: int | None = 0,
    level: float = 0.95,
    stratified: bool = True,
) -> dict[str, Any]:
    """:func:`bar_check` for several runs on one test set, on shared resamples.

    Because every run is scored on the same resamples, the result also says how the set of
    runs as a whole would fare on another test set of the same size and class supports:
    ``expected`` is the mean number of runs meeting the bar per resample (the sum of the
    runs' ``share``) and ``all_share`` the fraction of resamples in which every run meets it.

    Returns ``{"runs": [bar_check result without "bar", one per run], "counts": {status: n},
    "meet": n, "expected": float, "all_share": float, "bar": {...}, "config": {...}}``.
    """
    _check_level(level)
    bars = _bars(bar_accuracy, bar_macro_f1)
    group = list(preds)
    if not group:
        raise ValueError("bar_check_runs needs at least one prediction array")
    yt, arrays = _check_inputs(y_true, group, num_classes)
    indices = _resample_indices(yt, n_resamples, seed, stratified)
    config = _config(yt, num_classes, n_resamples, seed, level, stratified)
    runs, passes = [], []
    for yp in arrays:
        one, both = _bar_one(yt, yp, indices, num_classes, bars, level)
        runs.append(one | {"config": config})
        passes.append(both)
    passed = np.stack(passes)  # (runs, R) bool
    counts = {k: sum(r["status"] == k for r in runs) for k in BAR_STATUSES}
    return {
        "runs": runs,
        "counts": counts,
        "meet": counts["clearly meets"] + counts["meets"],
        "expected": float(passed.sum(0).mean()),
        "all_share": float(passed.all(0).mean()),
        "bar": bars,
        "config": config,
    }


def shipping_bar(
    y_true: Any,
    preds: Sequence[Any],
    variants: Sequence[str],
    num_classes: int,
    bar_accuracy: float = SHIPPING_BAR[0],
    bar_macro_f1: float = SHIPPING_BAR[1],
    n_resamples: int = 2000,
    seed: int | None = 0,
    level: float = 0.95,
    stratified: bool = True,
) -> dict[str, Any]:
    """The shipping bar for a set of runs on one test set, in its two parts.

    The bar is met when

    1. no run *clearly misses* it: no run has an interval (of :func:`bar_check_runs`, at
       ``level``) lying wholly below its threshold, for accuracy or for macro-F1; and
    2. every variant's seed-mean macro-F1 (the mean over its runs of the point macro-F1 on the
       whole test set) is at least ``bar_macro_f1``.

    ``preds[i]`` is run i's (N,) predictions and ``variants[i]`` its variant. Returns the
    :func:`bar_check_runs` result plus ``"met"`` (bool), ``"clearly_missing"`` (indices of the
    runs that clearly miss, in input order) and ``"variants"``: ``{variant: {"runs": n,
    "macro_f1": seed mean, "meets": bool}}`` in order of first appearance.
    """
    group = list(preds)
    names = [str(v) for v in variants]
    if len(names) != len(group):
        raise ValueError(f"{len(group)} prediction arrays but {len(names)} variants")
    res = bar_check_runs(
        y_true, group, num_classes, bar_accuracy, bar_macro_f1, n_resamples, seed, level,
        stratified,
    )  # fmt: skip
    runs = res["runs"]
    clearly = [i for i, r in enumerate(runs) if r["status"] == "clearly misses"]
    per_variant: dict[str, list[float]] = {}
    for v, r in zip(names, runs, strict=True):
        per_variant.setdefault(v, []).append(float(r["macro_f1"]["value"]))
    threshold = res["bar"]["macro_f1"]
    summary = {
        v: {
            "runs": len(f1s),
            "macro_f1": float(np.mean(f1s)),
            "meets": bool(np.mean(f1s) >= threshold),
        }
        for v, f1s in per_variant.items()
    }
    met = not clearly and all(s["meets"] for s in summary.values())
    return {**res, "met": bool(met), "clearly_missing": clearly, "variants": summary}
