"""Comparing stored runs, and the README results section.

Two entry points, both driven by run folders on disk (DESIGN.md section 5):

* :func:`compare_runs` / :func:`compare_cli` (``python -m csba compare RUN_DIR ...``): the
  paper's per-class tables (Tables 7, 12, 13) with bootstrap 95% intervals, paired deltas
  against the first run, a summary, a seed-aggregated view and the most adversarial class pairs
  (Table 4) of diagnosed runs; as DataFrames, as one JSON document, as CSV/LaTeX files and as
  figures (PNG via matplotlib, self-contained HTML via plotly).
* :func:`write_readme_results` / :func:`report_cli` (``python -m csba report ROOT --readme
  README.md``): a Markdown results section built from every run of one dataset under a folder,
  written between ``<!-- results:start -->`` and ``<!-- results:end -->`` in the README.

Everything is computed from the test predictions stored in run.json (no model is rebuilt and no
data are read), so comparing runs takes well under a second per run. No Streamlit import here:
the dashboard pages call these functions and render the tables and figures themselves.
"""

from __future__ import annotations

import math
import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import stats
from .diagnostics import sorted_pairs
from .store import RunError, list_runs, read_run_json

__all__ = [
    "RESULTS_END",
    "RESULTS_START",
    "RunRecord",
    "compare_cli",
    "compare_runs",
    "confusion_figure",
    "f1_bar_figure",
    "format_comparison",
    "load_records",
    "render_results_markdown",
    "replace_between_markers",
    "report_cli",
    "write_figures",
    "write_readme_results",
    "write_tables",
]

LEVEL = 0.95  # coverage of every interval
TOP_PAIRS = 3  # most adversarial class pairs listed per run (paper Table 4)
RESULTS_START = "<!-- results:start -->"
RESULTS_END = "<!-- results:end -->"
OVERALL_LABEL = "(overall)"  # the class column of rows about a whole-test-set metric

# Tables compare_runs returns, in the order they are printed and written.
TABLE_NAMES = ("summary", "per_class_f1", "per_class", "deltas", "seeds", "conflict")

# Order in which variants appear in the README: the reference first, then the paper's order.
_VARIANT_ORDER = ("baseline", "csba", "gradnorm", "focal", "class_heads")

_METRIC_LABELS = {
    "accuracy": "accuracy",
    "macro_f1": "macro-F1",
    "balanced_accuracy": "balanced acc.",
    "precision": "precision",
    "recall": "recall",
    "f1": "F1",
}


# --------------------------------------------------------------------------------------------
# Loading runs
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Gradient conflict from run.json (tolerant of the exact layout of "diagnostics")
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# compare_runs
# --------------------------------------------------------------------------------------------


def _ci(entry: Mapping[str, Any]) -> tuple[float, float, float]:
    return float(entry["value"]), float(entry["ci"][0]), float(entry["ci"][1])


def _group_keys(records: Sequence[RunRecord]) -> list[str]:
    """Seed-aggregation key of each run: its variant, plus the image size when sizes differ.

    Runs at different resolutions are different experiments even with the same variant, so they
    are not averaged together.
    """
    sizes = {r.image_size for r in records}
    if len(sizes) <= 1:
        return [r.variant for r in records]
    return [f"{r.variant}@{r.image_size}px" for r in records]


def _optional_number(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(float(x)) else None


def _int_or_none(x: Any) -> int | None:
    """An integer cell of a DataFrame (which may hold None, NaN or pd.NA) as int or None."""
    if x is None or x is pd.NA or (isinstance(x, float) and math.isnan(x)):
        return None
    return int(x)


def _nan_to_none(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def compare_runs(
    run_dirs: Sequence[str | os.PathLike],
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = LEVEL,
    top_pairs: int = TOP_PAIRS,
) -> dict[str, Any]:
    """Compare runs evaluated on one test set; the first run is the reference for deltas.

    Returns ``{"tables": {name: DataFrame}, "json": {...}, "records": [RunRecord],
    "reference": name}``. Tables (see :data:`TABLE_NAMES`):

    * ``summary``: one row per run: accuracy, macro-F1 and balanced accuracy with bootstrap
      intervals (``m``, ``m_ci_low``, ``m_ci_high``), parameters, best epoch, epochs run,
      generalisation gap, mean/std gradient conflict (NaN when not diagnosed).
    * ``per_class``: long table ``run, class, metric, value, ci_low, ci_high, support`` for
      precision, recall, F1 (paper Tables 7, 12, 13).
    * ``per_class_f1``: wide, printable: one row per class, one column per run, cells
      ``"0.520 [0.410, 0.630]"``.
    * ``deltas``: ``run, reference, class, metric, delta, ci_low, ci_high, significant`` for
      every run but the reference, per class (precision, recall, F1) and overall (class
      ``"(overall)"``: accuracy, macro-F1, balanced accuracy), paired bootstrap intervals.
    * ``seeds``: ``variant, class, metric, mean, std, min, max, n, runs`` over the seeds of each
      variant given more than once (accuracy, macro-F1, balanced accuracy, per-class F1).
    * ``conflict``: ``run, variant, seed, rank, class_a, class_b, cos``: the ``top_pairs`` most
      adversarial class pairs of each diagnosed run (paper Table 4).

    Raises :class:`~csba.store.RunError` for an unusable run folder and ValueError when the
    runs do not share a test set (message names both runs) or an option is out of range.
    """
    if not run_dirs:
        raise ValueError("compare needs at least one run folder")
    if int(n_resamples) < 1:
        raise ValueError(f"the number of bootstrap resamples must be at least 1, got {n_resamples}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level!r}")
    records = load_records(run_dirs)
    _check_same_test_set(records)
    ref = records[0]
    classes = ref.classes
    c = len(classes)
    n_resamples = int(n_resamples)

    boots = [
        stats.bootstrap_metrics(r.y_true, r.y_pred, c, n_resamples, seed, level) for r in records
    ]
    gcms = [_gcm_of(r.meta, top_pairs) for r in records]
    train_counts = ref.train_counts

    # --- summary -------------------------------------------------------------------------
    summary_rows = []
    for r, b, g in zip(records, boots, gcms, strict=True):
        row: dict[str, Any] = {
            "run": r.name,
            "path": str(r.path),
            "variant": r.variant,
            "seed": r.seed,
            "dataset": r.dataset_name,
            "image_size": r.image_size,
            "n": int(r.y_true.size),
        }
        for m in stats.OVERALL_METRICS:
            row[m], row[f"{m}_ci_low"], row[f"{m}_ci_high"] = _ci(b[m])
        row["parameters"] = r.meta.get("parameters")
        row["best_epoch"] = r.meta.get("best_epoch")
        row["epochs_run"] = r.meta.get("epochs_run", len(r.meta.get("history") or []) or None)
        row["generalisation_gap"] = _optional_number(r.meta.get("generalisation_gap"))
        row["gcm_mean"] = g["mean"] if g else float("nan")
        row["gcm_std"] = g["std"] if g else float("nan")
        summary_rows.append(row)
    summary = pd.DataFrame(summary_rows)
    for col in ("parameters", "best_epoch", "epochs_run", "seed", "image_size"):
        summary[col] = summary[col].astype("Int64")  # integers with room for "missing"
    summary["generalisation_gap"] = summary["generalisation_gap"].astype(float)

    # --- per-class (long and wide) --------------------------------------------------------
    pc_rows = []
    for r, b in zip(records, boots, strict=True):
        for cname, entry in zip(classes, b["per_class"], strict=True):
            for metric in stats.PER_CLASS_METRICS:
                v, lo, hi = _ci(entry[metric])
                pc_rows.append(
                    {
                        "run": r.name,
                        "class": cname,
                        "metric": metric,
                        "value": v,
                        "ci_low": lo,
                        "ci_high": hi,
                        "support": int(entry["support"]),
                    }
                )
    per_class = pd.DataFrame(
        pc_rows, columns=["run", "class", "metric", "value", "ci_low", "ci_high", "support"]
    )
    wide: dict[str, list[Any]] = {"class": list(classes)}
    if train_counts is not None:
        wide["train"] = list(train_counts)
    wide["support"] = [int(e["support"]) for e in boots[0]["per_class"]]
    for r, b in zip(records, boots, strict=True):
        wide[r.name] = [_fmt_ci(*_ci(e["f1"])) for e in b["per_class"]]
    per_class_f1 = pd.DataFrame(wide)

    # --- deltas against the reference (paired) --------------------------------------------
    stats_runs = [r.stats_run() for r in records]
    deltas = stats.delta_table(
        stats_runs, reference=0, n_resamples=n_resamples, seed=seed, level=level,
        include_overall=True,
    )  # fmt: skip
    deltas["class"] = deltas["class"].replace("(overall)", OVERALL_LABEL)

    # --- seed aggregation (variants given with several seeds) ------------------------------
    keys = _group_keys(records)
    multi = [k for k in dict.fromkeys(keys) if keys.count(k) > 1]
    seed_runs = [r.stats_run(variant=k) for r, k in zip(records, keys, strict=True) if k in multi]
    seeds = stats.seed_table(seed_runs)
    keep = seeds["metric"].isin(stats.OVERALL_METRICS) | (seeds["metric"] == "f1")
    seeds = seeds[keep].reset_index(drop=True)

    # --- conflict (paper Table 4) ---------------------------------------------------------
    conflict_rows = []
    for r, g in zip(records, gcms, strict=True):
        if not g:
            continue
        for rank, (a, b_, cos) in enumerate(g["pairs"], start=1):
            conflict_rows.append(
                {
                    "run": r.name,
                    "variant": r.variant,
                    "seed": r.seed,
                    "rank": rank,
                    "class_a": a,
                    "class_b": b_,
                    "cos": cos,
                }
            )
    conflict = pd.DataFrame(
        conflict_rows, columns=["run", "variant", "seed", "rank", "class_a", "class_b", "cos"]
    )
    conflict["seed"] = conflict["seed"].astype("Int64")
    conflict["cos"] = conflict["cos"].astype(float)

    tables = {
        "summary": summary,
        "per_class_f1": per_class_f1,
        "per_class": per_class,
        "deltas": deltas,
        "seeds": seeds,
        "conflict": conflict,
    }
    doc = _comparison_json(records, boots, gcms, tables, n_resamples, seed, level)
    return {"tables": tables, "json": doc, "records": records, "reference": ref.name}


def _comparison_json(
    records: Sequence[RunRecord],
    boots: Sequence[dict],
    gcms: Sequence[dict | None],
    tables: Mapping[str, pd.DataFrame],
    n_resamples: int,
    seed: int,
    level: float,
) -> dict[str, Any]:
    """The JSON form of a comparison (plain Python types; NaN becomes None)."""
    classes = records[0].classes
    runs = []
    for r, b, g in zip(records, boots, gcms, strict=True):
        entry: dict[str, Any] = {
            "name": r.name,
            "path": str(r.path),
            "variant": r.variant,
            "seed": r.seed,
            "dataset": r.dataset_name,
            "image_size": r.image_size,
            "n": int(r.y_true.size),
        }
        for m in stats.OVERALL_METRICS:
            v, lo, hi = _ci(b[m])
            entry[m], entry[f"{m}_ci"] = v, [lo, hi]
        entry["parameters"] = r.meta.get("parameters")
        entry["best_epoch"] = r.meta.get("best_epoch")
        entry["generalisation_gap"] = _optional_number(r.meta.get("generalisation_gap"))
        entry["gcm_mean"] = _nan_to_none(g["mean"]) if g else None
        entry["gcm_std"] = _nan_to_none(g["std"]) if g else None
        per_class = {}
        for cname, e in zip(classes, b["per_class"], strict=True):
            pc: dict[str, Any] = {}
            for metric in ("f1", "precision", "recall"):
                v, lo, hi = _ci(e[metric])
                pc[metric], pc[f"{metric}_ci"] = v, [lo, hi]
            pc["support"] = int(e["support"])
            per_class[cname] = pc
        entry["per_class"] = per_class
        cm = stats.confusion_from_predictions(r.y_true, r.y_pred, len(classes))
        entry["confusion_matrix"] = cm.tolist()
        runs.append(entry)

    deltas = [
        {
            "run": row["run"],
            "reference": row["reference"],
            "class": row["class"],
            "metric": row["metric"],
            "delta": float(row["delta"]),
            "ci": [float(row["ci_low"]), float(row["ci_high"])],
            "significant": bool(row["significant"]),
        }
        for row in tables["deltas"].to_dict("records")
    ]
    seed_aggs = [
        {
            "variant": row["variant"],
            "class": row["class"],
            "metric": row["metric"],
            **{k: _nan_to_none(float(row[k])) for k in ("mean", "std", "min", "max")},
            "n": int(row["n"]),
            "runs": [s.strip() for s in str(row["runs"]).split(",")],
        }
        for row in tables["seeds"].to_dict("records")
    ]
    conflict = [
        {
            "run": row["run"],
            "variant": row["variant"],
            "seed": _int_or_none(row["seed"]),
            "rank": int(row["rank"]),
            "classes": [row["class_a"], row["class_b"]],
            "cos": float(row["cos"]),
        }
        for row in tables["conflict"].to_dict("records")
    ]
    return {
        "reference": records[0].name,
        "classes": classes,
        "bootstrap": {
            "n_resamples": n_resamples,
            "seed": seed,
            "level": level,
            "stratified": True,
        },
        "runs": runs,
        "deltas": deltas,
        "seed_aggregates": seed_aggs,
        "conflict": conflict,
    }


# --------------------------------------------------------------------------------------------
# Terminal output
# --------------------------------------------------------------------------------------------


def _fmt(x: Any, digits: int = 3, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)) or x is pd.NA:
        return "-"
    return f"{float(x):+.{digits}f}" if signed else f"{float(x):.{digits}f}"


def _fmt_ci(v: float, lo: float, hi: float, digits: int = 3, signed: bool = False) -> str:
    """``0.520 [0.410, 0.630]``: a value and its interval."""
    return f"{_fmt(v, digits, signed)} [{_fmt(lo, digits, signed)}, {_fmt(hi, digits, signed)}]"


def _text_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Aligned plain-text table: text columns left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(x) for x in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def is_text(i: int) -> bool:
        # A column is text when any body cell does not start like a number.
        for row in cells[1:]:
            s = row[i].lstrip("+-")
            if s and s != "-" and not s[:1].isdigit():
                return True
        return False

    left = [is_text(i) for i in range(len(headers))]
    lines = []
    for k, row in enumerate(cells):
        parts = [
            row[i].ljust(widths[i]) if left[i] else row[i].rjust(widths[i])
            for i in range(len(headers))
        ]
        lines.append("  ".join(parts).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_comparison(comparison: Mapping[str, Any]) -> str:
    """Readable terminal tables of a :func:`compare_runs` result."""
    t = comparison["tables"]
    doc = comparison["json"]
    b = doc["bootstrap"]
    out = [
        f"{len(doc['runs'])} run(s) on one test set of {doc['runs'][0]['n']} images; intervals: "
        f"{round(100 * b['level'])}% stratified bootstrap, {b['n_resamples']} resamples, "
        f"seed {b['seed']}; reference for deltas: {doc['reference']}",
        "",
        "Summary",
    ]
    rows = []
    for r in t["summary"].to_dict("records"):
        rows.append(
            [
                r["run"],
                r["variant"],
                _int_or_dash(r["seed"]),
                _int_or_dash(r["parameters"], thousands=True),
                _int_or_dash(r["best_epoch"]),
                *[
                    _fmt_ci(r[m], r[f"{m}_ci_low"], r[f"{m}_ci_high"])
                    for m in stats.OVERALL_METRICS
                ],
                _fmt(r["gcm_mean"]),
            ]
        )
    out.append(
        _text_table(
            ["run", "variant", "seed", "parameters", "best epoch", "accuracy", "macro-F1",
             "balanced accuracy", "mean conflict"],
            rows,
        )
    )  # fmt: skip
    pc = t["per_class"]
    for metric, title in (
        ("f1", "Per-class F1 (paper Table 7)"),
        ("precision", "Per-class precision"),
        ("recall", "Per-class recall"),
    ):
        out += ["", title]
        sub = pc[pc["metric"] == metric]
        names = list(dict.fromkeys(sub["run"]))
        rows = []
        for cname in doc["classes"]:
            cells = sub[sub["class"] == cname]
            support = int(cells["support"].iloc[0])
            row = [cname, support]
            for n in names:
                e = cells[cells["run"] == n].iloc[0]
                row.append(_fmt_ci(e["value"], e["ci_low"], e["ci_high"]))
            rows.append(row)
        out.append(_text_table(["class", "support", *names], rows))
    d = t["deltas"]
    if len(d):
        out += [
            "",
            f"Deltas against {doc['reference']} (paired bootstrap; * = interval excludes 0; "
            "paper Tables 12/13)",
        ]
        rows = []
        for (run, cname), grp in d.groupby(["run", "class"], sort=False):
            row = [run, cname]
            for metric in ("f1", "precision", "recall", "macro_f1", "accuracy"):
                e = grp[grp["metric"] == metric]
                if len(e) == 0:
                    row.append("")
                    continue
                e = e.iloc[0]
                star = "*" if e["significant"] else " "
                row.append(_fmt_ci(e["delta"], e["ci_low"], e["ci_high"], signed=True) + star)
            rows.append(row)
        out.append(_text_table(["run", "class", "ΔF1", "ΔP", "ΔR", "Δmacro-F1", "Δaccuracy"], rows))
    s = t["seeds"]
    if len(s):
        out += ["", "Over seeds (mean ± std [min, max])"]
        rows = [
            [
                r["variant"],
                r["class"],
                _METRIC_LABELS.get(r["metric"], r["metric"]),
                r["n"],
                f"{_fmt(r['mean'])} ± {_fmt(r['std'])} [{_fmt(r['min'])}, {_fmt(r['max'])}]",
            ]
            for r in s.to_dict("records")
        ]
        out.append(_text_table(["variant", "class", "metric", "seeds", "value"], rows))
    cf = t["conflict"]
    if len(cf):
        out += ["", "Most adversarial class pairs (gradient cosine; paper Table 4)"]
        rows = [
            [r["run"], r["rank"], f"{r['class_a']} / {r['class_b']}", _fmt(r["cos"], signed=True)]
            for r in cf.to_dict("records")
        ]
        out.append(_text_table(["run", "rank", "pair", "cosine"], rows))
    return "\n".join(out)


def _int_or_dash(x: Any, thousands: bool = False) -> str:
    if x is None or x is pd.NA or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{int(x):,}" if thousands else str(int(x))


# --------------------------------------------------------------------------------------------
# Files: CSV, LaTeX, figures
# --------------------------------------------------------------------------------------------


def _out_dir(path: str | os.PathLike, what: str) -> Path:
    d = Path(path)
    if d.exists() and not d.is_dir():
        raise ValueError(f"--{what} '{d}' exists and is not a folder")
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create the {what} folder '{d}' ({e.strerror})") from None
    return d


def write_tables(
    comparison: Mapping[str, Any],
    csv_dir: str | os.PathLike | None = None,
    latex_dir: str | os.PathLike | None = None,
) -> list[Path]:
    """Write every table as ``<name>.csv`` and/or ``<name>.tex``; returns the files written.

    Every table is written even when empty (a header only), so scripts can rely on the file set.
    The .tex files hold one complete ``tabular`` environment (booktabs rules).
    """
    written = []
    tables: Mapping[str, pd.DataFrame] = comparison["tables"]
    if csv_dir is not None:
        d = _out_dir(csv_dir, "csv")
        for name, df in tables.items():
            path = d / f"{name}.csv"
            df.to_csv(path, index=False)
            written.append(path)
    if latex_dir is not None:
        d = _out_dir(latex_dir, "latex")
        for name, df in tables.items():
            path = d / f"{name}.tex"
            frame = df.drop(columns=["path"]) if "path" in df.columns else df
            path.write_text(stats.to_latex_tabular(frame) + "\n")
            written.append(path)
    return written


def _f1_entries(comparison: Mapping[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """Classes and, per run, its F1 values and interval half-widths (for error bars)."""
    doc = comparison["json"]
    classes = doc["classes"]
    series = []
    for run in doc["runs"]:
        v = np.array([run["per_class"][c]["f1"] for c in classes])
        lo = np.array([run["per_class"][c]["f1_ci"][0] for c in classes])
        hi = np.array([run["per_class"][c]["f1_ci"][1] for c in classes])
        series.append({"name": run["name"], "f1": v, "minus": v - lo, "plus": hi - v})
    return classes, series


def f1_bar_figure(comparison: Mapping[str, Any]):
    """Plotly grouped bar chart of per-class F1 per run with 95% bootstrap error bars."""
    import plotly.graph_objects as go

    classes, series = _f1_entries(comparison)
    fig = go.Figure()
    for s in series:
        fig.add_trace(
            go.Bar(
                name=s["name"],
                x=classes,
                y=s["f1"],
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": s["plus"],
                    "arrayminus": s["minus"],
                },
            )
        )
    level = round(100 * comparison["json"]["bootstrap"]["level"])
    fig.update_layout(
        barmode="group",
        title=f"Per-class F1 with {level}% bootstrap intervals",
        yaxis={"title": "F1", "range": [0, 1.05]},
        xaxis={"title": "class"},
        legend={"title": "run"},
    )
    return fig


def _confusions(comparison: Mapping[str, Any], normalize: bool) -> list[tuple[str, np.ndarray]]:
    out = []
    for run in comparison["json"]["runs"]:
        cm = np.asarray(run["confusion_matrix"], dtype=np.float64)
        if normalize:  # rows sum to 1: recall on the diagonal, comparable across class sizes
            rows = cm.sum(axis=1, keepdims=True)
            cm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
        out.append((run["name"], cm))
    return out


def _grid_shape(n: int) -> tuple[int, int]:
    cols = min(n, 3)
    return math.ceil(n / cols), cols


def confusion_figure(comparison: Mapping[str, Any], normalize: bool = True):
    """Plotly grid of confusion matrices (rows: true class, columns: predicted), one per run."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    classes = comparison["json"]["classes"]
    mats = _confusions(comparison, normalize)
    nrows, ncols = _grid_shape(len(mats))
    fig = make_subplots(rows=nrows, cols=ncols, subplot_titles=[n for n, _ in mats])
    raw = _confusions(comparison, False)
    for k, ((name, cm), (_, counts)) in enumerate(zip(mats, raw, strict=True)):
        text = [
            [f"{cm[i, j]:.2f}<br>({int(counts[i, j])})" if normalize else str(int(cm[i, j]))
             for j in range(len(classes))]
            for i in range(len(classes))
        ]  # fmt: skip
        fig.add_trace(
            go.Heatmap(
                z=cm,
                x=classes,
                y=classes,
                text=text,
                texttemplate="%{text}",
                colorscale="Blues",
                zmin=0,
                zmax=1 if normalize else float(max(m.max() for _, m in mats) or 1),
                showscale=k == 0,
                hovertemplate="true %{y}<br>predicted %{x}<br>%{text}<extra>" + name + "</extra>",
            ),
            row=k // ncols + 1,
            col=k % ncols + 1,
        )
    fig.update_yaxes(autorange="reversed", title_text="true")
    fig.update_xaxes(title_text="predicted")
    fig.update_layout(
        title="Confusion matrices" + (" (row-normalised; counts in brackets)" if normalize else ""),
        height=380 * nrows,
        width=max(520, 420 * ncols),
    )
    return fig


def _f1_bar_png(comparison: Mapping[str, Any], path: Path) -> None:
    # The object-oriented API with an explicit Agg canvas: no pyplot state and no global
    # backend switch, so this is safe inside the dashboard process and without a display.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    classes, series = _f1_entries(comparison)
    fig = Figure(figsize=(max(6.0, 1.2 * len(classes) * max(1, len(series)) / 2 + 3), 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = np.arange(len(classes))
    width = 0.8 / max(1, len(series))
    for k, s in enumerate(series):
        ax.bar(
            x - 0.4 + width * (k + 0.5),
            s["f1"],
            width,
            yerr=np.vstack([s["minus"], s["plus"]]),
            capsize=3,
            label=s["name"],
        )
    ax.set_xticks(x, classes, rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("F1")
    level = round(100 * comparison["json"]["bootstrap"]["level"])
    ax.set_title(f"Per-class F1 with {level}% bootstrap intervals")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _confusion_png(comparison: Mapping[str, Any], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    classes = comparison["json"]["classes"]
    mats = _confusions(comparison, True)
    raw = _confusions(comparison, False)
    nrows, ncols = _grid_shape(len(mats))
    size = 1.0 + 0.7 * len(classes)
    fig = Figure(figsize=(size * ncols + 1, size * nrows + 0.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        if k >= len(mats):
            ax.set_axis_off()
            continue
        name, cm = mats[k]
        counts = raw[k][1]
        ax.imshow(cm, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(
                    j,
                    i,
                    f"{cm[i, j]:.2f}\n({int(counts[i, j])})",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if cm[i, j] > 0.6 else "black",
                )
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(classes)), classes, fontsize=7)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
        ax.set_title(name, fontsize=9)
    fig.suptitle("Confusion matrices (row-normalised; counts in brackets)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_figures(comparison: Mapping[str, Any], out_dir: str | os.PathLike) -> list[Path]:
    """Per-class F1 bars and the confusion-matrix grid as PNG and self-contained HTML.

    The HTML files embed plotly.js (``include_plotlyjs=True``, about 4 MB each) because nothing
    may be fetched at run time: they open offline.
    """
    d = _out_dir(out_dir, "figures")
    written = []
    for stem, make_png, make_fig in (
        ("per_class_f1", _f1_bar_png, f1_bar_figure),
        ("confusion_matrices", _confusion_png, confusion_figure),
    ):
        png = d / f"{stem}.png"
        make_png(comparison, png)
        html = d / f"{stem}.html"
        make_fig(comparison).write_html(html, include_plotlyjs=True, full_html=True)
        written += [png, html]
    return written


# --------------------------------------------------------------------------------------------
# CLI: compare
# --------------------------------------------------------------------------------------------


def compare_cli(args: Any, print_json) -> int:
    """``python -m csba compare``: see :func:`compare_runs`.

    ``args`` has ``run_dirs``, ``json``, ``csv``, ``latex``, ``figures``, ``resamples`` and
    ``seed``. With ``--json`` stdout holds exactly one JSON document (the list of files written
    is in it, under ``files``, and on stderr); otherwise readable tables. Errors are RunError or
    ValueError with a one-line message (the CLI prints it and exits with status 2).
    """
    import sys

    comparison = compare_runs(
        list(args.run_dirs),
        n_resamples=int(getattr(args, "resamples", 2000)),
        seed=int(getattr(args, "seed", 0)),
    )
    written = write_tables(comparison, getattr(args, "csv", None), getattr(args, "latex", None))
    if getattr(args, "figures", None):
        written += write_figures(comparison, args.figures)
    if getattr(args, "json", False):
        print_json({**comparison["json"], "files": [str(p) for p in written]})
        for p in written:
            print(f"wrote {p}", file=sys.stderr)
        return 0
    print(format_comparison(comparison))
    if written:
        print()
        for p in written:
            print(f"wrote {p}")
    return 0


# --------------------------------------------------------------------------------------------
# README results section
# --------------------------------------------------------------------------------------------


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
    chosen.sort(key=lambda r: (_variant_sort_key(r.variant), r.seed or 0, str(r.path)))
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


def _md(text: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[bool]) -> str:
    lines = ["| " + " | ".join(_md(h) for h in headers) + " |"]
    lines.append("|" + "|".join("---:" if r else "---" for r in right) + "|")
    lines += ["| " + " | ".join(_md(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def _spread_cell(values: Sequence[float], ci: Sequence[float] | None, digits: int = 3) -> str:
    """``0.612 ± 0.020 [0.570, 0.650]`` (± only with several seeds, interval when given)."""
    agg = stats.aggregate_seeds(values)
    text = _fmt(agg["mean"], digits)
    if agg["n"] > 1:
        text += f" ± {_fmt(agg['std'], digits)}"
    if ci is not None:
        text += f" [{_fmt(ci[0], digits)}, {_fmt(ci[1], digits)}]"
    return text


def _params_cell(p: Any) -> str:
    if not isinstance(p, (int, float)) or isinstance(p, bool):
        return "-"
    return f"{int(p):,} ({p / 1e6:.2f}M)"


def _verdict(
    groups: Mapping[str, list[RunRecord]],
    y_true: np.ndarray,
    num_classes: int,
    dataset_label: str,
    n_resamples: int,
    seed: int,
    level: float,
) -> tuple[str, dict[str, Any]]:
    """One plain sentence: does CSBA beat the baseline on macro-F1, and how sure is that?

    Two sources of uncertainty are checked. The test set: a paired bootstrap of the difference
    of seed-mean macro-F1 (both variants on the same resampled images). The seeds: with at least
    two seeds of each, the difference must also exceed twice its seed standard error (Welch).
    Only when the difference is resolved by both is a winner named.
    """
    pct = round(100 * level)
    if "csba" not in groups or "baseline" not in groups:
        missing = [v for v in ("baseline", "csba") if v not in groups]
        sentence = (
            f"Whether CSBA beats the baseline on {dataset_label} cannot be decided yet: there are "
            f"no {' or '.join(missing)} runs here."
        )
        return sentence, {"decided": False, "reason": "missing variant", "missing": missing}
    a, b = groups["csba"], groups["baseline"]
    res = stats.bootstrap_seed_mean(
        y_true,
        [r.y_pred for r in a],
        num_classes,
        n_resamples,
        seed,
        level,
        reference=[r.y_pred for r in b],
    )
    d, lo, hi = _ci(res["macro_f1"])

    def f1s(rs: list[RunRecord]) -> list[float]:
        return [
            float(
                stats.metrics_from_confusion(
                    stats.confusion_from_predictions(r.y_true, r.y_pred, num_classes)
                )["macro_f1"]
            )
            for r in rs
        ]

    fa, fb = stats.aggregate_seeds(f1s(a)), stats.aggregate_seeds(f1s(b))
    seeds_note = f"{fa['n']} seed(s) of CSBA, {fb['n']} of the baseline"
    # Seed-to-seed standard error of the difference (Welch). A variant with a single seed
    # borrows the spread measured on the other one, since seed noise is a property of the
    # training recipe more than of the head; with one seed each it stays unmeasured.
    measured = [g["std"] for g in (fa, fb) if g["n"] > 1 and math.isfinite(g["std"])]
    se = None
    seed_resolved = None
    if measured:
        pooled = math.sqrt(sum(v**2 for v in measured) / len(measured))
        sa = fa["std"] if fa["n"] > 1 else pooled
        sb = fb["std"] if fb["n"] > 1 else pooled
        se = math.sqrt(sa**2 / fa["n"] + sb**2 / fb["n"])
        seed_resolved = abs(d) > 2 * se
    ci_text = f"{pct}% paired bootstrap interval [{lo:+.3f}, {hi:+.3f}]"
    numbers = (
        f"mean macro-F1 {fa['mean']:.3f} vs {fb['mean']:.3f}, difference {d:+.3f}, {ci_text}, "
        f"{seeds_note}"
    )
    info = {
        "difference": d,
        "ci": [lo, hi],
        "csba_macro_f1": fa["mean"],
        "baseline_macro_f1": fb["mean"],
        "seed_se": se,
        "csba_seeds": fa["n"],
        "baseline_seeds": fb["n"],
    }
    test_resolved = lo > 0 or hi < 0
    if not test_resolved:
        sentence = (
            f"On {dataset_label} the difference between CSBA and the baseline is not resolved: "
            f"the interval of the macro-F1 difference includes zero ({numbers})."
        )
        info.update(decided=False, reason="interval includes zero")
    elif seed_resolved is False:
        sentence = (
            f"On {dataset_label} the difference between CSBA and the baseline is not resolved: "
            f"the macro-F1 difference is within twice its seed-to-seed standard error "
            f"{se:.3f} ({numbers})."
        )
        info.update(decided=False, reason="within seed spread")
    else:
        tail = "" if seed_resolved else "; one seed each, so the seed spread is unmeasured"
        if d > 0:
            head = f"On {dataset_label} CSBA beats the baseline on macro-F1"
        else:
            head = f"On {dataset_label} CSBA does not beat the baseline: its macro-F1 is lower"
        sentence = f"{head} ({numbers}{tail})."
        info.update(decided=True, csba_better=d > 0, seed_spread_measured=bool(seed_resolved))
    return sentence, info


def render_results_markdown(
    root: str | os.PathLike,
    dataset: str = "elpv",
    image_size: int | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = LEVEL,
    command: str | None = None,
    bar: tuple[float, float] | None = None,
) -> tuple[str, dict[str, Any]]:
    """The Markdown results section for the runs of ``dataset`` under ``root`` (no markers).

    Returns ``(markdown, info)`` where ``info`` has ``runs`` (paths), ``variants``,
    ``image_size``, ``minority_class``, ``verdict`` (sentence plus the numbers behind it) and
    ``bar``: with ``bar`` = (accuracy, macro-F1) thresholds every run must reach, each run's
    :func:`csba.stats.bar_check` and the counts (None without a bar).
    The text depends only on the runs (no date), so regenerating it is idempotent.
    """
    records, notes = _select_runs(root, dataset, image_size)
    ref = records[0]
    classes = ref.classes
    c = len(classes)
    y_true = ref.y_true
    size = ref.image_size
    pct = round(100 * level)
    groups: dict[str, list[RunRecord]] = {}
    for r in records:
        groups.setdefault(r.variant, []).append(r)
    variants = sorted(groups, key=_variant_sort_key)

    train_counts = ref.train_counts
    test_support = np.bincount(y_true, minlength=c)
    if train_counts is not None:
        minority = int(np.argmin(train_counts))
        minority_note = f"{train_counts[minority]} training images"
    else:  # no recorded split counts: the rarest test class stands in
        minority = int(np.argmin(test_support))
        minority_note = f"{int(test_support[minority])} test images"

    def point(r: RunRecord) -> dict[str, np.ndarray]:
        return stats.metrics_from_confusion(stats.confusion_from_predictions(r.y_true, r.y_pred, c))

    points = {v: [point(r) for r in groups[v]] for v in variants}
    boots = {
        v: stats.bootstrap_seed_mean(
            y_true, [r.y_pred for r in groups[v]], c, n_resamples, seed, level
        )
        for v in variants
    }
    gcms = {v: [g for g in (_gcm_of(r.meta, None) for r in groups[v]) if g] for v in variants}
    dataset_label = {"elpv": "ELPV", "elpv8": "ELPV (8 classes)"}.get(dataset, dataset)
    if command is None:
        command = f"python -m csba report {shlex.quote(str(root))} --dataset {dataset}"
        command += _bar_flags(bar)
    verdict, verdict_info = _verdict(groups, y_true, c, dataset_label, n_resamples, seed, level)
    single_groups = _single_view_groups(groups)
    single_verdict = None
    if single_groups is not None:
        single_verdict = _verdict(single_groups, y_true, c, dataset_label, n_resamples, seed, level)

    lines = [
        f"### Results: {dataset_label} at {size} px" if size else f"### Results: {dataset_label}",
        "",
        f"Generated from {len(records)} run(s) under `{root}` by `{command}`; rerun it to "
        "refresh this section. All numbers are on one test set of "
        f"{int(y_true.size)} images (split seed {ref.split_seed}). A cell reads mean ± standard "
        f"deviation over seeds, then the {pct}% bootstrap interval of the seed mean "
        f"({n_resamples} stratified resamples of the test set, seed {seed})."
        f"{_protocol_text(records)}{_views_text(records)}",
        "",
        f"**Verdict.** {verdict}",
        "",
        *(
            [f"**Without test-time views** (single forward pass): {single_verdict[0]}", ""]
            if single_verdict
            else []
        ),
        "#### Variants (paper Table 2 and headline metrics)",
        "",
    ]
    rows = []
    for v in variants:
        rs = groups[v]
        pts = points[v]
        b = boots[v]
        delta = "-"
        if v != "baseline" and "baseline" in groups:
            dres = stats.bootstrap_seed_mean(
                y_true,
                [r.y_pred for r in rs],
                c,
                n_resamples,
                seed,
                level,
                reference=[r.y_pred for r in groups["baseline"]],
            )
            delta = _fmt_ci(*_ci(dres["macro_f1"]), signed=True)
        conflict = "-"
        if gcms[v]:
            conflict = _spread_cell([g["mean"] for g in gcms[v]], None)
        rows.append(
            [
                v,
                _params_cell(rs[0].meta.get("parameters")),
                len(rs),
                _spread_cell([float(p["accuracy"]) for p in pts], b["accuracy"]["ci"]),
                _spread_cell([float(p["macro_f1"]) for p in pts], b["macro_f1"]["ci"]),
                _spread_cell(
                    [float(p["f1"][minority]) for p in pts], b["per_class"][minority]["f1"]["ci"]
                ),
                delta,
                conflict,
            ]
        )
    lines.append(
        _md_table(
            ["variant", "parameters", "seeds", "accuracy", "macro-F1",
             f"F1 of {classes[minority]} (rarest: {minority_note})",
             "Δ macro-F1 vs baseline (paired)", "mean conflict"],
            rows,
            [False, True, True, True, True, True, True, True],
        )
    )  # fmt: skip
    lines += ["", "#### Per-class F1 (paper Table 7)", ""]
    rows = []
    for k, cname in enumerate(classes):
        row: list[Any] = [cname]
        if train_counts is not None:
            row.append(train_counts[k])
        row.append(int(test_support[k]))
        for v in variants:
            row.append(
                _spread_cell(
                    [float(p["f1"][k]) for p in points[v]], boots[v]["per_class"][k]["f1"]["ci"]
                )
            )
        rows.append(row)
    headers = ["class"] + (["training images"] if train_counts is not None else [])
    headers += ["test images", *variants]
    lines.append(_md_table(headers, rows, [False] + [True] * (len(headers) - 1)))

    lines += ["", "#### Gradient conflict (paper Table 4)", ""]
    diagnosed = [v for v in variants if gcms[v]]
    if not diagnosed:
        lines.append(
            "No run here has been diagnosed yet; run `python -m csba diagnose RUN_DIR` on each "
            "run folder and regenerate this section."
        )
    else:
        rows = []
        for v in diagnosed:
            gs = gcms[v]
            rows.append(
                [
                    v,
                    len(gs),
                    _spread_cell([g["mean"] for g in gs], None),
                    _spread_cell([g["std"] for g in gs], None),
                ]
            )
        lines.append(
            "Mean and standard deviation of the off-diagonal gradient cosines between classes "
            "(more negative: more conflict), averaged over the diagnosed seeds (± their spread)."
        )
        lines.append("")
        lines.append(
            _md_table(
                ["variant", "diagnosed seeds", "mean conflict", "std of conflict"],
                rows,
                [False, True, True, True],
            )
        )
        lines += [
            "",
            "Most adversarial class pairs: the most negative cosines of the seed-averaged "
            "gradient conflict matrix.",
            "",
        ]
        rows = []
        for v in diagnosed:
            pairs = _mean_pairs(gcms[v])
            cells = [f"{a} / {b}: {cos:+.3f}" for a, b, cos in pairs[:TOP_PAIRS]]
            cells += ["-"] * (TOP_PAIRS - len(cells))
            rows.append([v, *cells])
        lines.append(
            _md_table(
                ["variant", *[f"pair {k + 1}" for k in range(TOP_PAIRS)]],
                rows,
                [False] * (TOP_PAIRS + 1),
            )
        )
    lines += _single_view_lines(groups, variants, classes[minority])
    per_run, bar_info = _per_run_lines(
        groups, points, variants, classes, minority, n_resamples, seed, level, bar
    )
    lines += per_run
    lines += _branch_share_lines(groups, variants, classes)
    lines += _tradeoff_lines(groups, variants, gcms)
    if notes:
        lines += ["", "Notes: " + "; ".join(notes) + "."]
    info = {
        "runs": [str(r.path) for r in records],
        "variants": {v: len(groups[v]) for v in variants},
        "dataset": dataset,
        "image_size": size,
        "minority_class": classes[minority],
        "verdict": {"sentence": verdict, **verdict_info},
        "verdict_single_view": (
            {"sentence": single_verdict[0], **single_verdict[1]} if single_verdict else None
        ),
        "notes": notes,
        "bar": bar_info,
    }
    return "\n".join(lines), info


# TrainConfig fields that make up the training protocol (DESIGN.md §2); the rest name the run
# (variant, seed, paths) or only change speed (device, precision, threads).
PROTOCOL_KEYS = (
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "lr_schedule",
    "lr_step",
    "lr_gamma",
    "keep",
    "patience",
    "ema_decay",
    "focal_gamma",
    "augment",
)


def protocol_changes(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The protocol settings of a run that differ from the pinned defaults of TrainConfig.

    A run.json written before a setting existed lacks it and ran with its default.
    """
    from .train import TrainConfig

    pinned = TrainConfig()
    config = meta.get("config") or {}
    return {k: config[k] for k in PROTOCOL_KEYS if k in config and config[k] != getattr(pinned, k)}


def _protocol_text(records: Sequence[RunRecord]) -> str:
    """A sentence saying whether the runs used the pinned training protocol, and if not, how."""
    changes = [protocol_changes(r.meta) for r in records]

    def listed(c: Mapping[str, Any]) -> str:
        return ", ".join(f"`{k}` {v}" for k, v in c.items())

    if all(c == changes[0] for c in changes):
        if not changes[0]:
            return " Every run used the pinned training protocol (DESIGN.md §2)."
        return (
            " Every run used the pinned training protocol (DESIGN.md §2) except "
            f"{listed(changes[0])}."
        )
    kinds = sorted({listed(c) or "pinned" for c in changes})
    return (
        " Warning: these runs were trained with different protocols "
        f"({'; '.join(kinds)}), so they are not compared like with like."
    )


def _views_text(records: Sequence[RunRecord]) -> str:
    """A sentence on the test-time views behind the runs' stored predictions ('' for none)."""
    views = sorted({int((r.meta.get("evaluation") or {}).get("views") or 1) for r in records})
    if views == [1]:
        return ""
    if len(views) == 1:
        kind = "flips x 90-degree rotations" if views[0] == 8 else "flips"
        return (
            f" Predictions average the softmax over {views[0]} test-time views ({kind}, as in "
            "training augmentation); each run.json keeps the single-view metrics under "
            "`metrics_single_view`."
        )
    return (
        f" Warning: these runs' stored predictions use different numbers of test-time views "
        f"({', '.join(map(str, views))}), so they are not compared like with like."
    )


def _single_view_groups(
    groups: Mapping[str, list[RunRecord]],
) -> dict[str, list[RunRecord]] | None:
    """The runs with their single-view test predictions (``predictions_single_view``) instead,
    when they were evaluated with test-time views and every run keeps them; else None."""
    out: dict[str, list[RunRecord]] = {}
    for v, rs in groups.items():
        out[v] = []
        for r in rs:
            test = (r.meta.get("predictions_single_view") or {}).get("test") or {}
            if "y_pred" not in test or (r.meta.get("evaluation") or {}).get("views", 1) == 1:
                return None
            y_pred = _labels_from(test["y_pred"], len(r.classes), "y_pred", r.path)
            if y_pred.shape != r.y_true.shape:
                return None
            out[v].append(replace(r, y_pred=y_pred))
    return out


def _single_view_lines(
    groups: Mapping[str, list[RunRecord]], variants: Sequence[str], minority: str
) -> list[str]:
    """Headline metrics without test-time views (``metrics_single_view``), when runs have them."""
    rows = []
    for v in variants:
        single = [r.meta.get("metrics_single_view") for r in groups[v]]
        tests = [m["test"] for m in single if isinstance(m, Mapping) and "test" in m]
        if not tests:
            continue
        minority_f1 = [t.get("per_class", {}).get(minority, {}).get("f1") for t in tests]
        rows.append(
            [
                v,
                len(tests),
                _spread_cell([t["accuracy"] for t in tests], None),
                _spread_cell([t["macro_f1"] for t in tests], None),
                _spread_cell([_float_or_nan(x) for x in minority_f1], None),
            ]
        )
    if not rows:
        return []
    return [
        "",
        "#### Without test-time views",
        "",
        "The same runs' test metrics from a single forward pass (run.json `metrics_single_view`), "
        "mean ± spread over seeds, for comparison with the tables above.",
        "",
        _md_table(
            ["variant", "seeds", "accuracy", "macro-F1", f"F1 {minority}"],
            rows,
            [False, True, True, True, True],
        ),
    ]


def _bar_flags(bar: tuple[float, float] | None) -> str:
    """The command-line flags that give ``bar`` ("" without one)."""
    return "" if bar is None else f" --bar-accuracy {bar[0]:g} --bar-macro-f1 {bar[1]:g}"


def _bar_text(bar: tuple[float, float]) -> str:
    return f"accuracy >= {bar[0]:.2f} and macro-F1 >= {bar[1]:.2f}"


def _per_run_lines(
    groups: Mapping[str, list[RunRecord]],
    points: Mapping[str, list[dict[str, np.ndarray]]],
    variants: Sequence[str],
    classes: Sequence[str],
    minority: int,
    n_resamples: int,
    seed: int,
    level: float,
    bar: tuple[float, float] | None = None,
) -> tuple[list[str], dict[str, Any] | None]:
    """One row per run (seed spread made visible), under the majority-class predictor's row.

    ``points[v]`` are the runs' test metrics, in the order of ``groups[v]``. Each run's
    accuracy and macro-F1 carry their own bootstrap interval (test-set noise of that run alone).
    With ``bar`` = (accuracy, macro-F1) every run also gets its :func:`stats.bar_check` status
    and the lines end with a count; the second return value then holds the per-run results
    (None without a bar).
    """
    c = len(classes)
    y_true = next(iter(groups.values()))[0].y_true
    majority = int(np.argmax(np.bincount(y_true, minlength=c)))
    trivial = stats.metrics_from_confusion(
        stats.confusion_from_predictions(y_true, np.full_like(y_true, majority), c)
    )
    rows = [
        [
            f"majority-class predictor (always {classes[majority]})",
            "-",
            "-",
            "-",
            _fmt(trivial["accuracy"]),
            _fmt(trivial["macro_f1"]),
            _fmt(trivial["f1"][minority]),
            "-",
        ]
        + (["-"] if bar else [])
    ]
    ordered = [
        (v, r, m)
        for v in variants
        for r, m in sorted(
            zip(groups[v], points[v], strict=True),
            key=lambda rm: (rm[0].seed is None, rm[0].seed),
        )
    ]
    total = len(ordered)
    above_acc = sum(bool(m["accuracy"] > trivial["accuracy"]) for _, _, m in ordered)
    above_f1 = sum(bool(m["macro_f1"] > trivial["macro_f1"]) for _, _, m in ordered)
    preds = [r.y_pred for _, r, _ in ordered]
    if bar:
        checked = stats.bar_check_runs(y_true, preds, c, *bar, n_resamples, seed, level)
        cis = checked["runs"]
    else:
        cis = [stats.bootstrap_metrics(y_true, p, c, n_resamples, seed, level) for p in preds]
    half_widths = [float(np.diff(ci["accuracy"]["ci"])[0]) / 2 for ci in cis]
    for (v, r, m), ci in zip(ordered, cis, strict=True):
        val = ((r.meta.get("metrics") or {}).get("val") or {}).get("macro_f1")
        single = ((r.meta.get("metrics_single_view") or {}).get("test")) or {}
        kept = " / ".join(_int_or_dash(r.meta.get(k)) for k in ("best_epoch", "epochs_run"))
        rows.append(
            [
                v,
                "-" if r.seed is None else r.seed,
                kept,
                _fmt(val),
                _fmt_ci(m["accuracy"], *ci["accuracy"]["ci"]),
                _fmt_ci(m["macro_f1"], *ci["macro_f1"]["ci"]),
                _fmt(m["f1"][minority]),
                (
                    f"{_fmt(single['accuracy'])} / {_fmt(single['macro_f1'])}"
                    if "accuracy" in single and "macro_f1" in single
                    else "-"
                ),
            ]
            + ([f"{ci['status']} ({ci['share']:.0%})"] if bar else [])
        )
    pct = round(100 * level)
    headers = ["run", "seed", "kept epoch / run", "val macro-F1", "accuracy", "macro-F1"]
    headers += [f"F1 {classes[minority]}", "single view: accuracy / macro-F1"]
    if bar:
        headers.append(f"bar: {_bar_text(bar)}")
    lines = [
        "",
        "#### Per run",
        "",
        f"Each run's test metrics (as stored; they are what the tables above aggregate) with the "
        f"{pct}% bootstrap interval of that run alone, the epoch early stopping kept out of those "
        f"trained, and its validation macro-F1. {above_acc} of {total} runs beat the "
        f"majority-class predictor's accuracy and {above_f1} of {total} its macro-F1. The test "
        "set alone moves a run's accuracy by about "
        f"±{float(np.median(half_widths)):.3f} (median half-width of these intervals).",
        "",
        _md_table(headers, rows, [False] + [True] * 7 + ([False] if bar else [])),
    ]
    if not bar:
        return lines, None
    counts = checked["counts"]
    meet = checked["meet"]
    lines += [
        "",
        f"Per-run bar ({_bar_text(bar)}, each run on its own): {meet} of {total} runs meet it, "
        f"{counts['clearly meets']} with both {pct}% intervals above it; of the {total - meet} "
        f"that miss it, {counts['misses within noise']} are within test-set noise of it (every "
        f"interval reaches it) and {counts['clearly misses']} miss it clearly. The percentage "
        "is the share of bootstrap resamples of the test set in which the run meets the bar. "
        "On these resamples (a stand-in for another test set of the same size), the same runs "
        f"meet it {checked['expected']:.1f} times out of {total} on average, and all {total} at "
        f"once in {checked['all_share']:.1%} of resamples.",
    ]
    summary = {
        "accuracy": bar[0],
        "macro_f1": bar[1],
        "runs": total,
        "meet": meet,
        "counts": counts,
        "expected": checked["expected"],
        "all_share": checked["all_share"],
        "per_run": [
            {"run": r.name, "variant": v, "seed": r.seed, **ci}
            for (v, r, _), ci in zip(ordered, cis, strict=True)
        ],
    }
    return lines, summary


def _branch_shares(meta: Mapping[str, Any]) -> np.ndarray | None:
    """``diagnostics.branches.shares`` (C, K) as an array, or None when absent or malformed."""
    diag = meta.get("diagnostics")
    branches = diag.get("branches") if isinstance(diag, Mapping) else None
    if not isinstance(branches, Mapping) or branches.get("shares") is None:
        return None
    try:
        shares = np.asarray(
            [[_float_or_nan(v) for v in row] for row in branches["shares"]], dtype=np.float64
        )
    except TypeError:
        return None
    return shares if shares.ndim == 2 and shares.size else None


def _branch_share_lines(
    groups: Mapping[str, list[RunRecord]], variants: Sequence[str], classes: Sequence[str]
) -> list[str]:
    """Paper Table 5: each class's gradient-norm share per branch, seed-averaged."""
    lines = ["", "#### Branch specialisation (paper Table 5)", ""]
    rows = []
    for v in variants:
        arrays = [a for a in (_branch_shares(r.meta) for r in groups[v]) if a is not None]
        arrays = [a for a in arrays if a.shape == (len(classes), arrays[0].shape[1])]
        if not arrays:
            continue
        mean = np.nanmean(np.stack(arrays), axis=0)  # (C, K)
        k = mean.shape[1]
        spread = np.nanmax(np.abs(mean - 1.0 / k))  # largest departure from uniform
        cells = [" / ".join(f"{x:.2f}" for x in row) for row in mean]
        rows.append([v, len(arrays), *cells, f"{spread:.3f}"])
    if not rows:
        lines.append("No run here has branch diagnostics yet (`python -m csba diagnose RUN_DIR`).")
        return lines
    lines.append(
        "Share of each class's gradient norm that falls on each classifier branch's parameters "
        "(attention included), branch 1 / 2 / ... (class_heads: one branch per class), averaged "
        "over the diagnosed seeds; uniform is 1/K. The last column is the largest departure from "
        "uniform: the paper reads shares far from 1/K as branches specialising on classes."
    )
    lines.append("")
    headers = ["variant", "seeds", *classes, "largest departure from 1/K"]
    lines.append(_md_table(headers, rows, [False, True, *([True] * len(classes)), True]))
    return lines


def _tradeoff_lines(
    groups: Mapping[str, list[RunRecord]],
    variants: Sequence[str],
    gcms: Mapping[str, list[Mapping[str, Any]]],
) -> list[str]:
    """Paper Table 6: validation accuracy, generalisation gap and conflict change vs baseline."""
    lines = ["", "#### Optimisation vs generalisation (paper Table 6)", ""]
    base = [g["mean"] for g in gcms.get("baseline", []) if math.isfinite(g["mean"])]
    base_mean = float(np.mean(base)) if base else None
    rows = []
    for v in variants:
        rs = groups[v]
        val = [
            _float_or_nan((r.meta.get("metrics") or {}).get("val", {}).get("accuracy")) for r in rs
        ]
        gap = [_float_or_nan(r.meta.get("generalisation_gap")) for r in rs]
        means = [g["mean"] for g in gcms.get(v, []) if math.isfinite(g["mean"])]
        change = "-"
        if base_mean is not None and means and v != "baseline":
            change = _spread_cell([m - base_mean for m in means], None)
        rows.append([v, len(rs), _spread_cell(val, None), _spread_cell(gap, None), change])
    lines.append(
        "Validation accuracy (float32) and generalisation gap (validation minus training loss) "
        "at the kept epoch, and the change of mean conflict against the baseline's seed mean "
        "(positive: gradients more aligned than the baseline's); mean ± spread over seeds."
    )
    lines.append("")
    lines.append(
        _md_table(
            ["variant", "seeds", "val accuracy", "generalisation gap", "Δ mean conflict"],
            rows,
            [False, True, True, True, True],
        )
    )
    return lines


def _mean_pairs(gcms: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, float]]:
    """Most adversarial pairs of the seed-averaged matrix (stored pairs when no matrix)."""
    mats = [g["matrix"] for g in gcms if g["matrix"] is not None]
    shapes = {m.shape for m in mats}
    if mats and len(shapes) == 1:
        stack = np.stack(mats)
        finite = np.isfinite(stack)
        with np.errstate(invalid="ignore"):
            mean = np.where(
                finite.any(axis=0),
                np.nansum(stack, axis=0) / np.maximum(finite.sum(axis=0), 1),
                np.nan,
            )
        return sorted_pairs(mean, gcms[0]["classes"])
    return list(gcms[0]["pairs"])


def replace_between_markers(text: str, body: str) -> str:
    """Put ``body`` between the results markers of ``text`` (appended at the end if absent).

    Only the text strictly between the markers changes; a lone or misordered marker is an
    error rather than a guess, so a hand-edited README is never mangled.
    """
    n_start, n_end = text.count(RESULTS_START), text.count(RESULTS_END)
    block = f"{RESULTS_START}\n{body.strip(chr(10))}\n{RESULTS_END}"
    if n_start == 0 and n_end == 0:
        head = text.rstrip("\n")
        return (head + "\n\n" if head else "") + block + "\n"
    if n_start != 1 or n_end != 1:
        raise ValueError(
            f"the README must hold exactly one '{RESULTS_START}' and one '{RESULTS_END}' "
            f"(found {n_start} and {n_end})"
        )
    i, j = text.index(RESULTS_START), text.index(RESULTS_END)
    if j < i:
        raise ValueError(f"'{RESULTS_END}' comes before '{RESULTS_START}' in the README")
    return text[:i] + block + text[j + len(RESULTS_END) :]


def write_readme_results(
    root: str | os.PathLike,
    readme_path: str | os.PathLike,
    dataset: str = "elpv",
    image_size: int | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = LEVEL,
    command: str | None = None,
    bar: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Regenerate the README's results section from the runs of ``dataset`` under ``root``.

    The section holds, per variant, mean and seed spread of accuracy, macro-F1 and the minority
    class's F1 (fewest training images) with bootstrap intervals, the parameter count (Table 2),
    the paired macro-F1 difference against the baseline, per-class F1 (Table 7), mean/std
    conflict and the most adversarial pairs (Table 4), branch gradient shares (Table 5) and
    validation accuracy / generalisation gap / conflict change (Table 6) of diagnosed runs, and
    one sentence on whether CSBA beats the baseline; with ``bar``, each run's status against
    that per-run bar (:func:`render_results_markdown`). It replaces the text between
    ``<!-- results:start -->`` and ``<!-- results:end -->`` (added at the end when absent; the
    README is created when missing). Writing is atomic. Returns the info dict of
    :func:`render_results_markdown` plus ``readme`` and ``changed``.
    """
    readme = Path(readme_path)
    if readme.exists() and not readme.is_file():
        raise ValueError(f"'{readme}' is not a file")
    if command is None:
        command = (
            f"python -m csba report {shlex.quote(str(root))} --readme "
            f"{shlex.quote(str(readme_path))} --dataset {dataset}"
        )
        if image_size is not None:
            command += f" --image-size {int(image_size)}"
        command += _bar_flags(bar)
    body, info = render_results_markdown(
        root, dataset, image_size, n_resamples, seed, level, command, bar
    )
    try:
        old = readme.read_text(encoding="utf-8") if readme.exists() else ""
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read '{readme}' ({e})") from None
    new = replace_between_markers(old, body)
    changed = new != old
    if changed:
        # Atomic: a temporary file in the same folder, then rename (as run.json).
        tmp = readme.with_name(f".{readme.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(new, encoding="utf-8")
            os.replace(tmp, readme)
        except OSError as e:
            raise ValueError(f"cannot write '{readme}' ({e.strerror})") from None
        finally:
            tmp.unlink(missing_ok=True)
    return {"readme": str(readme), "changed": changed, **info}


def report_cli(args: Any, print_json) -> int:
    """``python -m csba report ROOT --readme README.md [--dataset elpv]``.

    ``args`` has ``root``, ``readme`` and ``dataset``; optional ``image_size``, ``resamples``,
    ``seed``, ``bar_accuracy`` with ``bar_macro_f1`` (both or neither) and ``json``. Prints
    the verdict sentence (or one JSON document with ``--json``).
    """
    root = args.root
    readme = args.readme
    dataset = getattr(args, "dataset", None) or "elpv"
    image_size = getattr(args, "image_size", None)
    bar_acc = getattr(args, "bar_accuracy", None)
    bar_f1 = getattr(args, "bar_macro_f1", None)
    if (bar_acc is None) != (bar_f1 is None):
        raise ValueError("give both --bar-accuracy and --bar-macro-f1, or neither")
    for flag, value in (("--bar-accuracy", bar_acc), ("--bar-macro-f1", bar_f1)):
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError(f"{flag} must be in [0, 1], got {value:g}")
    info = write_readme_results(
        root,
        readme,
        dataset=dataset,
        image_size=image_size,
        n_resamples=int(getattr(args, "resamples", None) or 2000),
        seed=int(getattr(args, "seed", None) or 0),
        bar=None if bar_acc is None else (float(bar_acc), float(bar_f1)),
    )
    if getattr(args, "json", False):
        print_json(info)
        return 0
    state = "updated" if info["changed"] else "already up to date:"
    print(
        f"{state} {info['readme']} (results of {len(info['runs'])} run(s) of {dataset}: "
        + ", ".join(f"{v} x{n}" for v, n in info["variants"].items())
        + ")"
    )
    print(info["verdict"]["sentence"])
    if info["bar"]:
        b = info["bar"]
        print(
            f"per-run bar ({_bar_text((b['accuracy'], b['macro_f1']))}): {b['meet']} of "
            f"{b['runs']} runs meet it; " + ", ".join(f"{n} {k}" for k, n in b["counts"].items())
        )
    return 0
