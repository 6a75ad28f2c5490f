"""Paired comparison of two training protocols: the same variants and seeds trained two ways.

docs/design.md §2 allows a change to a pinned training value "when a measurement on the validation
split supports it". This module is that measurement. Runs under two roots (A: the reference,
usually the pinned protocol; B: the candidate) are paired by (method, seed), the method being the
variant plus its backbone when not trifire, so seed-to-seed noise, which on ELPV is as large as
most effects, cancels within each pair. Reported per pair and
as the mean difference B - A over pairs:

* validation and test accuracy and macro-F1 (the stored metrics, with the runs' test-time views)
  and the single-view test metrics, each with a t interval over pairs (seed noise and test-set
  noise together);
* on the test set also a paired bootstrap of the difference of the pair means (test-set noise
  alone; both protocols scored on the same resampled images);
* how many runs of each root clear a per-run bar (accuracy and macro-F1 thresholds);
* what each root's protocol is (the settings that differ from the pinned ones).

Validation decides (the test set is for reporting), with one caveat the result states: a run that
keeps its best-validation epoch has a validation score that was maximised over epochs, so it is
biased upward against a run that keeps its last epoch.

No Streamlit import here; ``python -m csba pair A B`` prints it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as sps

from . import stats
from .bar import shipping_bar
from .identity import protocol_text
from .models import PAPER_VARIANTS
from .report import (
    LEVEL,
    RunRecord,
    _check_same_test_set,
    _select_runs,
    _text_table,
    protocol_changes,
    shipping_bar_parts,
)

# (key in the comparison, where the number lives in run.json, label)
PAIRED_METRICS = (
    ("val_accuracy", ("metrics", "val", "accuracy"), "val accuracy"),
    ("val_macro_f1", ("metrics", "val", "macro_f1"), "val macro-F1"),
    ("test_accuracy", ("metrics", "test", "accuracy"), "test accuracy"),
    ("test_macro_f1", ("metrics", "test", "macro_f1"), "test macro-F1"),
    ("test1_accuracy", ("metrics_single_view", "test", "accuracy"), "single-view test accuracy"),
    ("test1_macro_f1", ("metrics_single_view", "test", "macro_f1"), "single-view test macro-F1"),
)
DEFAULT_BAR = (0.60, 0.45)  # (accuracy, macro-F1) every shipped ELPV run must reach (issue 8)


def _metric(meta: Mapping[str, Any], path: Sequence[str]) -> float:
    node: Any = meta
    for key in path:
        node = node.get(key) if isinstance(node, Mapping) else None
    if node is None and path[0] == "metrics_single_view":  # single-view runs keep one set
        return _metric(meta, ("metrics", *path[1:]))
    return float(node) if isinstance(node, (int, float)) else math.nan


def _views(meta: Mapping[str, Any]) -> int:
    return int((meta.get("evaluation") or {}).get("views") or 1)


def _protocol_label(records: Sequence[RunRecord]) -> str:
    kinds = []
    for r in records:
        changes = protocol_changes(r.meta)
        text = protocol_text(changes)
        text = f"{r.image_size} px, {text}"
        if text not in kinds:
            kinds.append(text)
    return "; ".join(kinds) if len(kinds) == 1 else "mixed: " + " | ".join(kinds)


def _t_interval(diffs: np.ndarray, level: float) -> tuple[float, float, float, float]:
    """Mean, standard error and ``level`` t interval of paired differences (nan below 2)."""
    n = diffs.size
    mean = float(diffs.mean()) if n else math.nan
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    se = float(diffs.std(ddof=1) / math.sqrt(n))
    half = float(sps.t.ppf(0.5 + level / 2, n - 1)) * se
    return mean, se, mean - half, mean + half


def compare_protocols(
    root_a: str | os.PathLike,
    root_b: str | os.PathLike,
    dataset: str = "elpv",
    image_size_a: int | None = None,
    image_size_b: int | None = None,
    bar: tuple[float, float] = DEFAULT_BAR,
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = LEVEL,
) -> dict[str, Any]:
    """Pair the runs of ``dataset`` under two roots by (method, seed); B minus A.

    Each root contributes the runs :func:`csba.report` would report (one image size: the most
    common unless given). Both must be scored on the same test images (any image size: the
    split depends only on the split seed). Raises ValueError when no pair exists.
    """
    runs_a, notes_a = _select_runs(root_a, dataset, image_size_a)
    runs_b, notes_b = _select_runs(root_b, dataset, image_size_b)
    by_key_a = {(r.method, r.seed): r for r in runs_a}
    pairs = [(by_key_a[(r.method, r.seed)], r) for r in runs_b if (r.method, r.seed) in by_key_a]
    if not pairs:
        raise ValueError(
            f"no variant and seed is under both '{root_a}' and '{root_b}' "
            f"(A: {sorted(by_key_a)}, B: {sorted((r.method, r.seed) for r in runs_b)})"
        )
    try:
        _check_same_test_set([pairs[0][0], pairs[0][1]])
    except ValueError as e:
        raise ValueError(f"the two roots were scored on different test sets: {e}") from None
    num_classes = pairs[0][0].num_classes

    rows = []
    for a, b in pairs:
        row: dict[str, Any] = {"variant": a.method, "seed": a.seed}
        for key, path, _ in PAIRED_METRICS:
            row[key] = {"a": _metric(a.meta, path), "b": _metric(b.meta, path)}
            row[key]["diff"] = row[key]["b"] - row[key]["a"]
        row["views"] = {"a": _views(a.meta), "b": _views(b.meta)}
        row["kept_epoch"] = {
            "a": f"{a.meta.get('best_epoch')}/{a.meta.get('epochs_run')}",
            "b": f"{b.meta.get('best_epoch')}/{b.meta.get('epochs_run')}",
        }
        rows.append(row)

    summary = {}
    for key, _, label in PAIRED_METRICS:
        diffs = np.array([r[key]["diff"] for r in rows], dtype=np.float64)
        diffs = diffs[np.isfinite(diffs)]
        mean, se, lo, hi = _t_interval(diffs, level)
        summary[key] = {
            "label": label,
            "pairs": int(diffs.size),
            "mean_diff": mean,
            "se": se,
            "ci": [lo, hi],
            "b_better": int((diffs > 0).sum()),
            "mean_a": float(np.nanmean([r[key]["a"] for r in rows])),
            "mean_b": float(np.nanmean([r[key]["b"] for r in rows])),
        }
    boot = stats.bootstrap_seed_mean(
        pairs[0][0].y_true,
        [b.y_pred for _, b in pairs],
        num_classes,
        n_resamples,
        seed,
        level,
        reference=[a.y_pred for a, _ in pairs],
    )
    test_bootstrap = {
        k: {"diff": float(boot[k]["value"]), "ci": [float(x) for x in boot[k]["ci"]]}
        for k in ("accuracy", "macro_f1")
    }

    def bar_count(records: Sequence[RunRecord]) -> dict[str, Any]:
        # The bar holds the paper's five on trifire, as in the report; a root holding none of
        # them (a sweep of other methods) is counted whole.
        records = [r for r in records if r.method in PAPER_VARIANTS] or list(records)
        # Pass or fail on the stored test metrics; whether a failing run is within test-set
        # noise of the bar from its stored predictions (csba.bar.bar_check: every upper bound
        # of its bootstrap intervals reaches the bar).
        ok = [
            r.name
            for r in records
            if _metric(r.meta, ("metrics", "test", "accuracy")) >= bar[0]
            and _metric(r.meta, ("metrics", "test", "macro_f1")) >= bar[1]
        ]
        checked = shipping_bar(
            records[0].y_true, [r.y_pred for r in records], [r.method for r in records],
            num_classes, *bar, n_resamples, seed, level,
        )  # fmt: skip
        status = {r.name: c["status"] for r, c in zip(records, checked["runs"], strict=True)}
        failing = sorted(r.name for r in records if r.name not in ok)
        return {
            "accuracy": bar[0],
            "macro_f1": bar[1],
            "level": level,
            "met": checked["met"],
            "clearly_missing": [records[i].name for i in checked["clearly_missing"]],
            "variants": checked["variants"],
            "meet": len(ok),
            "runs": len(records),
            "failing": failing,
            "within_noise": [n for n in failing if status[n] != "clearly misses"],
            "expected": checked["expected"],
            "all_share": checked["all_share"],
        }

    mixed = [f"{r['variant']}-s{r['seed']}" for r in rows if r["views"]["a"] != r["views"]["b"]]
    if mixed:  # the stored metrics then mix test-time views; the single-view ones do not
        notes_b = [
            *notes_b,
            f"test-time views differ from A's in {', '.join(mixed)}: compare the single-view "
            "rows for those (python -m csba evaluate RUN --views N re-scores a run)",
        ]
    keys_a = {(r.method, r.seed) for r in runs_a}
    keys_b = {(r.method, r.seed) for r in runs_b}
    keep_a = {str((r.meta.get("config") or {}).get("keep", "best")) for r, _ in pairs}
    keep_b = {str((r.meta.get("config") or {}).get("keep", "best")) for _, r in pairs}
    selection_bias = keep_a != keep_b
    val = summary["val_macro_f1"]
    return {
        "dataset": dataset,
        "level": level,
        "a": {
            "root": str(root_a),
            "protocol": _protocol_label([a for a, _ in pairs]),
            "bar": bar_count(runs_a),
            "notes": notes_a,
            "keep": sorted(keep_a),
        },
        "b": {
            "root": str(root_b),
            "protocol": _protocol_label([b for _, b in pairs]),
            "bar": bar_count(runs_b),
            "notes": notes_b,
            "keep": sorted(keep_b),
        },
        "bar": {"accuracy": bar[0], "macro_f1": bar[1]},
        "pairs": rows,
        "summary": summary,
        "test_bootstrap": test_bootstrap,
        "unpaired": {
            "a": sorted(f"{v}-s{s}" for v, s in keys_a - keys_b),
            "b": sorted(f"{v}-s{s}" for v, s in keys_b - keys_a),
        },
        "selection_bias": selection_bias,
        "verdict": _verdict(val, summary["val_accuracy"], level, selection_bias, keep_a),
    }


def _verdict(
    f1: Mapping[str, Any],
    acc: Mapping[str, Any],
    level: float,
    selection_bias: bool,
    keep_a: set[str],
) -> str:
    """One sentence: does validation support changing the protocol from A to B?"""
    pct = round(100 * level)
    n = f1["pairs"]
    if n < 2:
        return (
            f"Validation cannot decide with {n} pair: the seed noise of the difference is "
            "unmeasured; train more seeds."
        )
    lo, hi = f1["ci"]
    numbers = (
        f"validation macro-F1 B - A {f1['mean_diff']:+.3f}, {pct}% interval [{lo:+.3f}, "
        f"{hi:+.3f}], accuracy {acc['mean_diff']:+.3f} [{acc['ci'][0]:+.3f}, "
        f"{acc['ci'][1]:+.3f}], {n} pairs"
    )
    if lo > 0 and not acc["ci"][1] < 0:  # macro-F1 up, accuracy not clearly down
        head = "Validation supports B over A"
    elif hi < 0:
        head = "Validation favours A (the reference) over B"
    else:
        head = "Validation does not resolve A against B"
    tail = ""
    if selection_bias:
        tail = (
            f" A's runs keep {'/'.join(sorted(keep_a))}: where that is the best-validation epoch "
            "its validation score was maximised over epochs, so the comparison is biased "
            "toward A on validation"
        )
    return f"{head} ({numbers}).{tail}{'.' if tail else ''}"


def _fmt(x: float, signed: bool = False) -> str:
    if not isinstance(x, (int, float)) or not math.isfinite(x):
        return "-"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def format_protocols(result: Mapping[str, Any]) -> str:
    """The comparison as plain text: protocols, per-pair table, mean differences, verdict."""
    pct = round(100 * result["level"])
    lines = []
    for side in ("a", "b"):
        s = result[side]
        bar = s["bar"]
        lines.append(f"{side.upper()}: {s['root']} ({s['protocol']})")
        p = shipping_bar_parts(bar)
        lines.append(f"   {p['head']}. {p['runs']} {p['variants']}")
        lines += [f"   note: {n}" for n in s["notes"]]
    short = ("val_accuracy", "val_macro_f1", "test_accuracy", "test_macro_f1")
    headers = ["variant", "seed", "kept A", "kept B"]
    headers += [f"{result['summary'][k]['label']} A -> B" for k in short]
    rows = []
    for r in result["pairs"]:
        cells = [r["variant"], r["seed"], r["kept_epoch"]["a"], r["kept_epoch"]["b"]]
        cells += [
            f"{_fmt(r[k]['a'])} -> {_fmt(r[k]['b'])} ({_fmt(r[k]['diff'], True)})" for k in short
        ]
        rows.append(cells)
    lines += ["", _text_table(headers, rows), ""]
    srows = []
    for s in result["summary"].values():
        srows.append(
            [
                s["label"],
                s["pairs"],
                _fmt(s["mean_a"]),
                _fmt(s["mean_b"]),
                _fmt(s["mean_diff"], True),
                _fmt(s["se"]),
                f"[{_fmt(s['ci'][0], True)}, {_fmt(s['ci'][1], True)}]",
                f"{s['b_better']}/{s['pairs']}",
            ]
        )
    lines.append(
        _text_table(
            [
                "metric",
                "pairs",
                "mean A",
                "mean B",
                "B - A",
                "SE",
                f"{pct}% t interval",
                "B higher",
            ],
            srows,
        )
    )
    tb = result["test_bootstrap"]
    lines.append(
        f"test set alone ({pct}% paired bootstrap of the pair means): accuracy "
        f"{_fmt(tb['accuracy']['diff'], True)} [{_fmt(tb['accuracy']['ci'][0], True)}, "
        f"{_fmt(tb['accuracy']['ci'][1], True)}], macro-F1 {_fmt(tb['macro_f1']['diff'], True)} "
        f"[{_fmt(tb['macro_f1']['ci'][0], True)}, {_fmt(tb['macro_f1']['ci'][1], True)}]"
    )
    for side in ("a", "b"):
        if result["unpaired"][side]:
            lines.append(f"unpaired in {side.upper()}: {', '.join(result['unpaired'][side])}")
    lines += ["", result["verdict"]]
    return "\n".join(lines)
