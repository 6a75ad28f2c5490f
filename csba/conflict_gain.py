"""Does reducing gradient conflict help the minority class? (docs/diagnostics.md, "Conflict
gain"). Pure functions over run.json contents, used by ``report``, ``compare --json`` and the
Gradient conflict page.

The instrument is the same for every run: the Gradient Conflict Matrix of plain cross-entropy
over all parameters on the training split, model in eval mode (``diagnose``). Per run, against
the same-seed baseline of the same backbone, image size and device kind:

* d_cos_minority: change in the minority class's mean cosine with the other classes
  (higher = less conflict), d_conflict: change in the global mean cosine;
* d_f1_minority, d_macro_f1: change in the minority class's test F1 and in macro-F1.

Over methods (each method's seed mean is one point; the resampling unit is the method, since
seeds of one method are not independent): Spearman's rank correlation of d_cos_minority with
d_f1_minority, with a percentile bootstrap interval over methods, per backbone, never pooled.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .identity import backbone_name, method_label

__all__ = [
    "MIN_METHODS",
    "baselines_by_key",
    "conflict_gain",
    "global_sentence",
    "match_key",
    "method_label",
    "run_deltas",
    "spearman",
    "spearman_bootstrap",
]

MIN_METHODS = 3  # fewer method points than this cannot rank anything


def match_key(meta: Mapping[str, Any]) -> tuple:
    """What a run shares with the baseline it is measured against: dataset, image size, split
    seed, backbone (and pretraining), kind of device and training seed."""
    ds = meta.get("dataset") or {}
    device = str((meta.get("runtime") or {}).get("device", "cpu")).split(":")[0]
    return (
        ds.get("name"),
        ds.get("image_size"),
        ds.get("split_seed"),
        backbone_name(meta),
        device,
        (meta.get("config") or {}).get("seed"),
    )


def baselines_by_key(metas: Sequence[Mapping[str, Any]]) -> dict[tuple, Mapping[str, Any]]:
    """The baseline runs among ``metas`` by :func:`match_key`: ``out.get(match_key(run))`` is
    the baseline a run is measured against (None without one)."""
    return {match_key(m): m for m in metas if m.get("variant") == "baseline"}


def _minority(meta: Mapping[str, Any]) -> int:
    counts = ((meta.get("dataset") or {}).get("counts") or {}).get("train")
    if not counts:
        raise ValueError("run.json lacks the training counts (dataset.counts.train)")
    return int(np.argmin(counts))


def _gcm(meta: Mapping[str, Any]) -> np.ndarray | None:
    gcm = (meta.get("diagnostics") or {}).get("gcm") or {}
    m = gcm.get("matrix")
    if m is None:
        return None
    return np.asarray([[np.nan if v is None else float(v) for v in row] for row in m])


def _conflict_numbers(meta: Mapping[str, Any]) -> dict[str, float] | None:
    """Minority mean cosine, global mean cosine, minority F1 and macro-F1 of one run."""
    m = _gcm(meta)
    test = (meta.get("metrics") or {}).get("test") or {}
    per_class = test.get("per_class") or {}
    classes = list(meta.get("classes") or [])
    if m is None or not all(c in per_class for c in classes):
        return None
    k = _minority(meta)
    others = [j for j in range(m.shape[0]) if j != k]
    upper = m[np.triu_indices(m.shape[0], k=1)]
    return {
        "cos_minority": float(np.nanmean(m[k, others])),
        "conflict": float(np.nanmean(upper)),
        "f1_minority": float(per_class[classes[k]]["f1"]),
        "macro_f1": float(test["macro_f1"]),
    }


def run_deltas(metas: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per non-baseline run with a matched, diagnosed baseline: its label, backbone, seed and
    the four changes against that baseline. Runs without a match are left out."""
    baselines = baselines_by_key(metas)
    out = []
    for meta in metas:
        if meta.get("variant") == "baseline":
            continue
        base = baselines.get(match_key(meta))
        a = _conflict_numbers(meta)
        b = _conflict_numbers(base) if base is not None else None
        if a is None or b is None:
            continue
        out.append(
            {
                "method": method_label(meta),
                "variant": meta["variant"],
                "backbone": backbone_name(meta),
                "seed": (meta.get("config") or {}).get("seed"),
                "d_cos_minority": a["cos_minority"] - b["cos_minority"],
                "d_conflict": a["conflict"] - b["conflict"],
                "d_f1_minority": a["f1_minority"] - b["f1_minority"],
                "d_macro_f1": a["macro_f1"] - b["macro_f1"],
            }
        )
    return out


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their ranks), 1-based."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        tie = x == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson on average ranks); NaN when either is constant."""
    rx, ry = _ranks(np.asarray(x, float)), _ranks(np.asarray(y, float))
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def spearman_bootstrap(
    x: Sequence[float],
    y: Sequence[float],
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Spearman's rho of paired points with a percentile bootstrap interval over the points
    (resamples where a side is constant have no rho and are dropped; their share is reported)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    rho = spearman(x, y)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_resamples):
        idx = rng.integers(0, n, n)
        r = spearman(x[idx], y[idx])
        if math.isfinite(r):
            draws.append(r)
    alpha = (1 - level) / 2
    ci = (
        [float(np.quantile(draws, alpha)), float(np.quantile(draws, 1 - alpha))]
        if draws
        else [float("nan"), float("nan")]
    )
    return {
        "rho": rho,
        "ci": ci,
        "n": n,
        "n_resamples": n_resamples,
        "dropped": 1 - len(draws) / n_resamples,
        "level": level,
    }


def _sentence(backbone: str, res: Mapping[str, Any]) -> tuple[str, str]:
    pct = round(100 * res["level"])
    lo, hi = res["ci"]
    nums = (
        f"Spearman rho {res['rho']:+.2f}, {pct}% bootstrap interval over methods "
        f"[{lo:+.2f}, {hi:+.2f}], {res['n']} methods"
    )
    if lo > 0:
        return "help", (
            f"On {backbone}, methods that reduce conflict help the minority class ({nums})."
        )
    if hi < 0:
        return "hurt", (
            f"On {backbone}, methods that reduce conflict hurt the minority class ({nums})."
        )
    return "not resolved", (
        f"On {backbone}, whether methods that reduce conflict help the minority class is not "
        f"resolved: the interval includes zero ({nums})."
    )


def global_sentence(res: Mapping[str, Any] | None) -> str:
    """The global line under a backbone's sentence (report and dashboard print the same):
    ``"Global: rho(d conflict, d macro-F1) -0.27 [-0.98, +0.56]."``; empty without a result."""
    if not res:
        return ""
    lo, hi = res["ci"]
    return f"Global: rho(d conflict, d macro-F1) {res['rho']:+.2f} [{lo:+.2f}, {hi:+.2f}]."


def conflict_gain(
    metas: Sequence[Mapping[str, Any]],
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """The whole analysis: ``{"runs": run_deltas, "backbones": {backbone: {"methods": [seed
    means per method], "minority": {rho, ci, ...}, "global": {...}, "verdict", "sentence",
    "global_sentence"}}}``.

    ``minority`` correlates d_cos_minority with d_f1_minority, ``global`` d_conflict with
    d_macro_f1; the verdict ("help", "hurt", "not resolved") reads the minority one only.
    """
    runs = run_deltas(metas)
    out: dict[str, Any] = {"runs": runs, "backbones": {}}
    keys = ("d_cos_minority", "d_conflict", "d_f1_minority", "d_macro_f1")
    for backbone in sorted({r["backbone"] for r in runs}):
        by_method: dict[str, list[dict]] = {}
        for r in runs:
            if r["backbone"] == backbone:
                by_method.setdefault(r["method"], []).append(r)
        methods = [
            {"method": m, "seeds": len(rs), **{k: float(np.mean([r[k] for r in rs])) for k in keys}}
            for m, rs in sorted(by_method.items())
        ]
        entry: dict[str, Any] = {"methods": methods}
        if len(methods) < MIN_METHODS:
            entry.update(
                verdict="not resolved",
                sentence=(
                    f"On {backbone}, the relation between conflict and the minority class cannot "
                    f"be measured yet: {len(methods)} method(s) with a matched, diagnosed "
                    f"baseline, at least {MIN_METHODS} needed."
                ),
                minority=None,
                global_=None,
            )
        else:
            col = {k: [m[k] for m in methods] for k in keys}
            entry["minority"] = spearman_bootstrap(
                col["d_cos_minority"], col["d_f1_minority"], n_resamples, seed, level
            )
            entry["global"] = spearman_bootstrap(
                col["d_conflict"], col["d_macro_f1"], n_resamples, seed, level
            )
            entry["verdict"], entry["sentence"] = _sentence(backbone, entry["minority"])
        entry.setdefault("global", entry.pop("global_", None))
        entry["global_sentence"] = global_sentence(entry["global"])
        out["backbones"][backbone] = entry
    return out
