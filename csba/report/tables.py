"""Comparison tables of stored runs (:func:`compare_runs`): DataFrames, JSON, text, CSV/LaTeX."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .. import stats
from .fmt import _METRIC_LABELS, _fmt, _fmt_ci, _int_or_dash, _text_table
from .records import (
    LEVEL,
    TOP_PAIRS,
    RunRecord,
    _check_same_test_set,
    _ci,
    _gcm_of,
    load_records,
)

OVERALL_LABEL = "(overall)"  # the class column of rows about a whole-test-set metric

# Tables compare_runs returns, in the order they are printed and written.
TABLE_NAMES = ("summary", "per_class_f1", "per_class", "deltas", "seeds", "conflict")


def _group_keys(records: Sequence[RunRecord]) -> list[str]:
    """Seed-aggregation key of each run: the name of its :class:`csba.identity.RunIdentity`
    (variant, plus the backbone when not trifire; plus the image size when sizes differ, plus
    the protocol settings when runs differ only by those): runs averaged as seeds differ only by
    their seed (:func:`csba.identity.group_names`)."""
    from ..identity import group_names, identity

    idents = [identity(r.meta) for r in records]
    names = group_names(idents)
    return [names[i] for i in idents]


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
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Compare runs evaluated on one test set; the first run is the reference for deltas.

    ``progress(done, total)``, when given, is called after each bootstrap (one per run, then
    one paired bootstrap per run against the reference: ``total`` = 2 x runs - 1), e.g. to
    drive a progress bar; it does not change the results.

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

    total = 2 * len(records) - 1
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    boots = []
    for r in records:
        boots.append(stats.bootstrap_metrics(r.y_true, r.y_pred, c, n_resamples, seed, level))
        step()
    gcms = [_gcm_of(r.meta, top_pairs) for r in records]
    train_counts = ref.train_counts

    # --- summary -------------------------------------------------------------------------
    summary_rows = []
    for r, b, g in zip(records, boots, gcms, strict=True):
        row: dict[str, Any] = {
            "run": r.name,
            "path": str(r.path),
            "variant": r.variant,
            "backbone": r.backbone,
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
    # One run against the reference at a time (each pair has its own resamples from ``seed``,
    # exactly as one delta_table call over all runs), so progress can be reported per run.
    stats_runs = [r.stats_run() for r in records]
    parts = []
    for run in stats_runs[1:]:
        pair = [stats_runs[0], run]
        kw = {"n_resamples": n_resamples, "seed": seed, "level": level, "include_overall": True}
        parts.append(stats.delta_table(pair, reference=0, **kw))
        step()
    deltas = (
        pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=stats.DELTA_COLUMNS)
    )
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
    from ..conflict_gain import conflict_gain

    doc["conflict_gain"] = conflict_gain([r.meta for r in records], n_resamples, seed, level)
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
            "backbone": r.backbone,
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
