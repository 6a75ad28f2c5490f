"""Run records: loading run folders, checking they share a test set, picking the runs to report.

Also the gradient-conflict summary read from run.json and the protocol settings of a run.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import stats
from ..diagnostics import sorted_pairs
from ..identity import PROTOCOL_KEYS, is_finished, protocol_changes, run_status  # noqa: F401
from ..store import RunError, list_runs, read_run_json

LEVEL = 0.95  # coverage of every interval
TOP_PAIRS = 3  # most adversarial class pairs listed per run (paper Table 4)

# Order in which variants appear in the README: the reference first, then the paper's order.
_VARIANT_ORDER = ("baseline", "csba", "gradnorm", "focal", "class_heads")


@dataclass
class RunRecord:
    """One run as the report needs it: its folder, run.json and test predictions."""

    name: str  # unique display name among the runs compared
    path: Path
    meta: dict
    y_true: np.ndarray  # (N,) int64 test labels
    y_pred: np.ndarray  # (N,) int64 test predictions

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.meta["classes"]]

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def variant(self) -> str:
        return str(self.meta["variant"])

    @property
    def backbone(self) -> str:
        return str(self.meta.get("config", {}).get("backbone") or "trifire")

    @property
    def method(self) -> str:
        """The variant, plus the backbone when not trifire (csba.conflict_gain.method_label)."""
        from ..conflict_gain import method_label

        return method_label(self.meta)

    @property
    def reference(self) -> str | None:
        """The method this run is compared with: the baseline of its own backbone (and
        pretraining), since conflict and accuracy move with the backbone; a non-default
        backbone's baseline is compared with the default backbone's (``baseline``), the
        default baseline with nothing (None)."""
        suffix = self.method[len(self.variant) :]
        if self.variant != "baseline":
            return "baseline" + suffix
        return "baseline" if suffix else None

    @property
    def seed(self) -> int | None:
        seed = self.meta.get("config", {}).get("seed")
        return int(seed) if isinstance(seed, (int, float)) else None

    @property
    def dataset_name(self) -> str | None:
        return self.meta.get("dataset", {}).get("name")

    @property
    def image_size(self) -> int | None:
        size = self.meta.get("dataset", {}).get("image_size")
        if size is None:
            size = self.meta.get("config", {}).get("image_size")
        return int(size) if size is not None else None

    @property
    def split_seed(self) -> int | None:
        seed = self.meta.get("dataset", {}).get("split_seed")
        return int(seed) if seed is not None else None

    @property
    def train_counts(self) -> list[int] | None:
        counts = self.meta.get("dataset", {}).get("counts", {}).get("train")
        if isinstance(counts, list) and len(counts) == self.num_classes:
            return [int(c) for c in counts]
        return None

    def stats_run(self, variant: str | None = None) -> dict[str, Any]:
        """The run in the form :mod:`csba.stats` tables take."""
        return {
            "name": self.name,
            "variant": variant if variant is not None else self.variant,
            "classes": self.classes,
            "y_true": self.y_true,
            "y_pred": self.y_pred,
        }


def _labels_from(values: Any, num_classes: int, what: str, path: Path) -> np.ndarray:
    """A list of labels from run.json as int64, or a RunError naming the file."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise RunError(f"'{path / 'run.json'}': {what} is not a list of class labels") from None
    if arr.ndim != 1 or not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
        raise RunError(f"'{path / 'run.json'}': {what} is not a list of class labels")
    out = arr.astype(np.int64)
    if out.size and (out.min() < 0 or out.max() >= num_classes):
        raise RunError(f"'{path / 'run.json'}': {what} holds labels outside 0..{num_classes - 1}")
    return out


def _record(run_dir: str | os.PathLike, name: str = "") -> RunRecord:
    """Read one run folder; runs without test predictions cannot be compared."""
    path = Path(run_dir)
    meta = read_run_json(path)
    test = (meta.get("predictions") or {}).get("test") or {}
    c = int(meta["num_classes"])
    if "y_true" not in test or ("y_pred" not in test and "probs" not in test):
        raise RunError(
            f"'{path / 'run.json'}' holds no test predictions (predictions.test.y_true/y_pred); "
            "retrain the run with this version of csba"
        )
    y_true = _labels_from(test["y_true"], c, "predictions.test.y_true", path)
    if "y_pred" in test:
        y_pred = _labels_from(test["y_pred"], c, "predictions.test.y_pred", path)
    else:  # older runs may store only probabilities: the prediction is their argmax
        probs = np.asarray(test["probs"], dtype=np.float64)
        if probs.ndim != 2 or probs.shape[1] != c:
            raise RunError(f"'{path / 'run.json'}': predictions.test.probs is not an N x C table")
        y_pred = probs.argmax(axis=1).astype(np.int64)
    if y_true.size == 0:
        raise RunError(f"'{path / 'run.json'}': the stored test set is empty")
    if y_pred.shape != y_true.shape:
        raise RunError(
            f"'{path / 'run.json'}': {y_pred.size} test predictions for {y_true.size} test labels"
        )
    return RunRecord(name or path.name, path, meta, y_true, y_pred)


def _unique_names(paths: Sequence[Path], metas: Sequence[dict]) -> list[str]:
    """Short, unique display names: the folder name (``csba-s0``), else ``parent/folder``.

    The same folder given twice (a run compared with itself) gets ``#2``, ``#3`` suffixes so that
    every row of every table still names exactly one input.
    """
    base = []
    for p, m in zip(paths, metas, strict=True):
        name = p.name or f"{m['variant']}-s{m.get('config', {}).get('seed', 0)}"
        base.append(name)
    names = list(base)
    for i, n in enumerate(base):
        if base.count(n) > 1:
            names[i] = f"{paths[i].parent.name}/{paths[i].name}" if paths[i].parent.name else n
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


def load_records(run_dirs: Sequence[str | os.PathLike]) -> list[RunRecord]:
    """Read run folders (RunError on any unusable one) and give them unique display names."""
    records = [_record(d) for d in run_dirs]
    names = _unique_names([r.path for r in records], [r.meta for r in records])
    for r, n in zip(records, names, strict=True):
        r.name = n
    return records


def _check_same_test_set(records: Sequence[RunRecord]) -> None:
    """Raise ValueError unless every run was evaluated on the first run's test set.

    The paired bootstrap resamples the same test images for both runs of a delta, so the test
    labels must agree element by element; the recorded test indices (when both runs have them)
    must agree too, since two different splits can have identical label sequences.
    """
    ref = records[0]
    ref_idx = (ref.meta.get("split_indices") or {}).get("test")
    for r in records[1:]:
        pair = f"runs '{ref.path}' and '{r.path}'"
        if r.dataset_name != ref.dataset_name:
            raise ValueError(
                f"{pair} use different datasets ({ref.dataset_name} vs {r.dataset_name}); "
                "compare runs of one dataset"
            )
        if r.classes != ref.classes:
            raise ValueError(f"{pair} have different classes ({ref.classes} vs {r.classes})")
        if r.y_true.shape != ref.y_true.shape or not np.array_equal(r.y_true, ref.y_true):
            raise ValueError(
                f"{pair} were evaluated on different test sets ({ref.y_true.size} vs "
                f"{r.y_true.size} images, split seeds {ref.split_seed} vs {r.split_seed}); "
                "a paired comparison needs one test set"
            )
        idx = (r.meta.get("split_indices") or {}).get("test")
        if ref_idx is not None and idx is not None and list(idx) != list(ref_idx):
            raise ValueError(
                f"{pair} were evaluated on different test images (split seeds {ref.split_seed} "
                f"vs {r.split_seed}); a paired comparison needs one test set"
            )


def _float_or_nan(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return float("nan")
    return v


def _gcm_of(meta: Mapping[str, Any], top: int | None = TOP_PAIRS) -> dict[str, Any] | None:
    """The run's gradient conflict summary, or None when it has not been diagnosed.

    Accepts ``diagnostics.gcm`` (or a top-level ``gcm``) holding ``matrix`` (C x C, None for
    NaN) and optionally ``classes``, ``mean``, ``std`` and ``most_adversarial`` (a list of
    ``{"i", "j", "classes", "cos"}`` dicts or ``[i, j, cos]`` triples). Whatever is missing is
    derived from the matrix, so the report does not depend on the diagnostics' inner layout.
    Returns ``{"classes", "matrix" (ndarray), "mean", "std", "pairs": [(a, b, cos), ...]}``.
    """
    diag = meta.get("diagnostics")
    gcm = diag.get("gcm") if isinstance(diag, Mapping) else None
    if gcm is None:
        gcm = meta.get("gcm")
    if not isinstance(gcm, Mapping):
        return None
    classes = [str(c) for c in (gcm.get("classes") or meta.get("classes") or [])]
    matrix = None
    if gcm.get("matrix") is not None:
        try:
            raw = [[_float_or_nan(v) for v in row] for row in gcm["matrix"]]
            matrix = np.asarray(raw, dtype=np.float64)
        except TypeError:
            matrix = None
        if matrix is not None and (matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]):
            matrix = None
    if matrix is not None and len(classes) != matrix.shape[0]:
        classes = [str(i) for i in range(matrix.shape[0])]
    upper = matrix[np.triu_indices(matrix.shape[0], k=1)] if matrix is not None else np.array([])
    finite = upper[np.isfinite(upper)]
    mean = _float_or_nan(gcm.get("mean")) if gcm.get("mean") is not None else float("nan")
    std = _float_or_nan(gcm.get("std")) if gcm.get("std") is not None else float("nan")
    if math.isnan(mean) and finite.size:
        mean = float(finite.mean())
    if math.isnan(std) and finite.size:
        std = float(finite.std())
    pairs = _pairs_from(gcm.get("most_adversarial"), classes)
    if not pairs and matrix is not None:
        pairs = sorted_pairs(matrix, classes)
    if top is not None:
        pairs = pairs[:top]
    if matrix is None and not pairs and math.isnan(mean):
        return None
    return {"classes": classes, "matrix": matrix, "mean": mean, "std": std, "pairs": pairs}


def _class_name(x: Any, classes: Sequence[str]) -> str:
    if isinstance(x, (int, np.integer)) and 0 <= int(x) < len(classes):
        return classes[int(x)]
    return str(x)


def _pairs_from(items: Any, classes: Sequence[str]) -> list[tuple[str, str, float]]:
    """Pairs from a stored ``most_adversarial`` list, most negative first; [] if unreadable."""
    if not isinstance(items, (list, tuple)):
        return []
    pairs = []
    for item in items:
        if isinstance(item, Mapping):
            names = item.get("classes")
            if isinstance(names, (list, tuple)) and len(names) == 2:
                a, b = str(names[0]), str(names[1])
            elif "i" in item and "j" in item:
                a, b = _class_name(item["i"], classes), _class_name(item["j"], classes)
            else:
                continue
            cos = _float_or_nan(item.get("cos", item.get("cosine")))
        elif isinstance(item, (list, tuple)) and len(item) >= 3:
            a, b = _class_name(item[0], classes), _class_name(item[1], classes)
            cos = _float_or_nan(item[2])
        else:
            continue
        if math.isfinite(cos):
            pairs.append((a, b, cos))
    pairs.sort(key=lambda t: t[2])  # stable: stored order kept for ties
    return pairs


def _ci(entry: Mapping[str, Any]) -> tuple[float, float, float]:
    return float(entry["value"]), float(entry["ci"][0]), float(entry["ci"][1])


def _variant_sort_key(variant: str) -> tuple[int, str]:
    order = _VARIANT_ORDER.index(variant) if variant in _VARIANT_ORDER else len(_VARIANT_ORDER)
    return order, variant


def _most_common(values: Sequence[Any], prefer_larger: bool = True) -> Any:
    """The most frequent value; ties go to the larger one (e.g. the larger image size)."""
    counts: dict[Any, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    best = max(counts.values())
    tied = [v for v, n in counts.items() if n == best]
    return max(tied) if prefer_larger else min(tied)


def _select_runs(
    root: str | os.PathLike, dataset: str, image_size: int | None
) -> tuple[list[RunRecord], list[str]]:
    """Runs of ``dataset`` under ``root`` that share one test set, plus notes on runs left out.

    When runs at several image sizes (or split seeds) exist, the size with the most runs is
    reported (ties: the larger size), since only runs on one test set can be compared pairwise.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"'{root}' is not a folder of runs")
    notes: list[str] = []
    candidates: list[RunRecord] = []
    for info in list_runs(root):
        if info.error or info.meta is None:
            notes.append(f"skipped `{info.path}` ({info.error})")
            continue
        if info.meta.get("dataset", {}).get("name") != dataset:
            continue
        if not is_finished(info.meta):  # cancelled or interrupted: not a result
            notes.append(f"skipped `{info.path}` (status {run_status(info.meta)}: did not finish)")
            continue
        try:
            candidates.append(_record(info.path))
        except RunError as e:
            notes.append(f"skipped `{info.path}` ({e})")
    if not candidates:
        raise ValueError(
            f"no usable runs of dataset '{dataset}' under '{root}' "
            f"(train one: python -m csba train --dataset {dataset} --out {root})"
        )
    sizes = [r.image_size for r in candidates if r.image_size is not None]
    if image_size is None and sizes:
        image_size = _most_common(sizes)
    if image_size is not None:
        chosen = [r for r in candidates if r.image_size == image_size]
        if not chosen:
            raise ValueError(
                f"no runs of dataset '{dataset}' at {image_size} px under '{root}' "
                f"(sizes found: {sorted(set(sizes))})"
            )
        other = len(candidates) - len(chosen)
        if other:
            notes.append(f"{other} run(s) at other image sizes are not included")
        candidates = chosen
    split = _most_common([r.split_seed if r.split_seed is not None else -1 for r in candidates])
    chosen = [r for r in candidates if (r.split_seed if r.split_seed is not None else -1) == split]
    if len(chosen) < len(candidates):
        notes.append(f"{len(candidates) - len(chosen)} run(s) with another split seed left out")
    # Keep the runs whose test set equals that of the first run; name the rest in the notes.
    chosen.sort(key=lambda r: (_variant_sort_key(r.variant), r.method, r.seed or 0, str(r.path)))
    same = [chosen[0]]
    for r in chosen[1:]:
        try:
            _check_same_test_set([chosen[0], r])
            same.append(r)
        except ValueError:
            notes.append(f"skipped `{r.path}` (evaluated on another test set)")
    names = _unique_names([r.path for r in same], [r.meta for r in same])
    for r, n in zip(same, names, strict=True):
        r.name = n
    return same, notes


def paired_seed_mean(
    records: Sequence[RunRecord],
    reference: Sequence[RunRecord],
    y_true: np.ndarray,
    num_classes: int,
    n_resamples: int,
    seed: int,
    level: float,
) -> dict:
    """``stats.bootstrap_seed_mean`` of ``records`` paired with the ``reference`` runs on the
    one test set ``y_true``: the difference of seed means and its interval per metric."""
    return stats.bootstrap_seed_mean(
        y_true,
        [r.y_pred for r in records],
        num_classes,
        n_resamples,
        seed,
        level,
        reference=[r.y_pred for r in reference],
    )
