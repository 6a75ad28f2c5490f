"""The Markdown results section (every table) built from the runs of one dataset under a folder."""

from __future__ import annotations

import math
import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from .. import stats
from ..diagnostics import sorted_pairs
from ..identity import group_names, identity
from ..models import PAPER_VARIANTS
from .fmt import _fmt_ci, _md_table, _params_cell, _spread_cell
from .methods import conflict_gain_lines, method_table
from .records import (
    LEVEL,
    TOP_PAIRS,
    RunRecord,
    _ci,
    _float_or_nan,
    _gcm_of,
    _labels_from,
    _select_runs,
    _variant_sort_key,
    paired_seed_mean,
    protocol_changes,
)
from .verdict import _bar_flags, _per_run_lines, _verdict, shipping_bar_text


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
    ``bar``: with ``bar`` = (accuracy, macro-F1) thresholds, the shipping bar's judgement
    (:func:`csba.bar.shipping_bar`: ``met``, ``clearly_missing`` run names, ``variants`` seed
    means), each run's status and the counts (None without a bar).
    The text depends only on the runs (no date), so regenerating it is idempotent.
    """
    markdown, _, info = _render(root, dataset, image_size, n_resamples, seed, level, command, bar)
    return markdown, info


def _render(
    root: str | os.PathLike,
    dataset: str,
    image_size: int | None,
    n_resamples: int,
    seed: int,
    level: float,
    command: str | None,
    bar: tuple[float, float] | None,
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """:func:`render_results_markdown` plus the pieces of the README summary: ``title``,
    ``intro`` (runs and how a cell reads), ``verdicts`` (Markdown paragraphs), ``variants``
    (the variants table) and ``bar`` (the shipping bar's line, None without a bar)."""
    records, notes = _select_runs(root, dataset, image_size)
    ref = records[0]
    classes = ref.classes
    c = len(classes)
    y_true = ref.y_true
    size = ref.image_size
    pct = round(100 * level)
    groups: dict[str, list[RunRecord]] = {}
    names = group_names([identity(r.meta) for r in records])
    for r in records:  # seeds of one identity: variant, backbone (named when not trifire), ...
        groups.setdefault(names[identity(r.meta)], []).append(r)
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
    per_run, bar_info = _per_run_lines(
        groups, points, variants, classes, minority, n_resamples, seed, level, bar
    )
    title = f"### Results: {dataset_label}" + (f" at {size} px" if size else "")
    verdicts = [f"**Verdict.** {verdict}"]
    if single_verdict:
        verdicts.append(f"**Without test-time views** (single forward pass): {single_verdict[0]}")
    bar_line = shipping_bar_text(bar_info) if bar_info else None

    lines = [
        title,
        "",
        f"Generated from {len(records)} run(s) under `{root}` by `{command}`; rerun it to "
        "refresh this section. All numbers are on one test set of "
        f"{int(y_true.size)} images (split seed {ref.split_seed}). A cell reads mean ± standard "
        f"deviation over seeds, then the {pct}% bootstrap interval of the seed mean "
        f"({n_resamples} stratified resamples of the test set, seed {seed})."
        f"{_protocol_text(records)}{_views_text(records)}",
        "",
        *[x for v in verdicts for x in (v, "")],
        *([bar_line, ""] if bar_line else []),
        "#### Variants (paper Table 2 and headline metrics)",
        "",
    ]
    rows = []
    for v in variants:
        rs = groups[v]
        pts = points[v]
        b = boots[v]
        delta = "-"
        ref_name = rs[0].reference  # the baseline of the run's own backbone
        if ref_name is not None and ref_name in groups:
            dres = paired_seed_mean(rs, groups[ref_name], y_true, c, n_resamples, seed, level)
            delta = _fmt_ci(*_ci(dres["macro_f1"]), signed=True)
            if v != rs[0].variant:  # another backbone: say which baseline
                delta += f" vs {ref_name}"
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
    headers = [
        "variant", "parameters", "seeds", "accuracy", "macro-F1",
        f"F1 of {classes[minority]} (rarest: {minority_note})",
        "Δ macro-F1 vs baseline (paired)", "mean conflict",
    ]  # fmt: skip
    right = [False, True, True, True, True, True, True, True]
    lines.append(_md_table(headers, rows, right))
    # The README keeps the paper's five (its size is capped); the rest are in the results file.
    paper_rows = [r for r in rows if r[0] in PAPER_VARIANTS]
    variants_table = _md_table(headers, paper_rows or rows, right)
    others = [(r[0], r[2]) for r in rows if r[0] not in PAPER_VARIANTS] if paper_rows else []
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
    lines += per_run
    lines += _branch_share_lines(groups, variants, classes)
    lines += _tradeoff_lines(groups, variants, gcms)
    method_lines, methods_info = method_table(groups, y_true, c, n_resamples, seed, level)
    lines += method_lines
    gain_lines, gain_info = conflict_gain_lines(records, n_resamples, seed, level)
    lines += gain_lines
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
        "methods": methods_info,
        "conflict_gain": gain_info,
    }
    if others:
        gain = (gain_info.get("backbones") or {}).get("trifire")
        head = methods_info.get("beats") or []
        variants_table += (
            f"\n\nOther methods ({', '.join(f'{m} x{n}' for m, n in others)}; experiments, "
            "not held to the bar): "
            + (
                ", ".join(f"{v} beats {methods_info['methods'][v]['against']}" for v in head)
                if head
                else "none beats its baseline"
            )
            + " after Holm's correction."
            + (f" {gain['sentence']}" if gain else "")
            + " Their tables are in the results file linked above."
        )
    summary = {
        "title": title,
        "intro": (
            f"{len(records)} run(s) under `{root}`, one test set of {int(y_true.size)} images; "
            f"a cell reads mean ± seed standard deviation [{pct}% bootstrap interval of the "
            "seed mean]."
        ),
        "verdicts": verdicts,
        "variants": variants_table,
        "bar": bar_line,
    }
    return "\n".join(lines), summary, info


def _protocol_text(records: Sequence[RunRecord]) -> str:
    """A sentence saying whether the runs used the pinned training protocol, and if not, how."""
    changes = [protocol_changes(r.meta) for r in records]

    def listed(c: Mapping[str, Any]) -> str:
        return ", ".join(f"`{k}` {v}" for k, v in c.items())

    if all(c == changes[0] for c in changes):
        if not changes[0]:
            return " Every run used the pinned training protocol (`docs/design.md` §2)."
        return (
            " Every run used the pinned training protocol (`docs/design.md` §2) except "
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
    rows = []
    for v in variants:
        rs = groups[v]
        ref_name = rs[0].reference  # the baseline of the run's own backbone
        base = [g["mean"] for g in gcms.get(ref_name or "", []) if math.isfinite(g["mean"])]
        base_mean = float(np.mean(base)) if base else None
        val = [
            _float_or_nan((r.meta.get("metrics") or {}).get("val", {}).get("accuracy")) for r in rs
        ]
        gap = [_float_or_nan(r.meta.get("generalisation_gap")) for r in rs]
        means = [g["mean"] for g in gcms.get(v, []) if math.isfinite(g["mean"])]
        change = "-"
        if base_mean is not None and means:
            change = _spread_cell([m - base_mean for m in means], None)
            if v != rs[0].variant:  # another backbone: say which baseline
                change += f" vs {ref_name}"
        rows.append([v, len(rs), _spread_cell(val, None), _spread_cell(gap, None), change])
    lines.append(
        "Validation accuracy (float32) and generalisation gap (validation minus training loss) "
        "at the kept epoch, and the change of mean conflict against the seed mean of the "
        "baseline of the same backbone (positive: gradients more aligned than the baseline's); "
        "mean ± spread over seeds."
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
