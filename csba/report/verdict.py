"""The verdict (does CSBA beat the baseline?) and the shipping bar with its per-run table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .. import stats
from ..bar import shipping_bar
from ..models import PAPER_VARIANTS
from .fmt import _fmt, _fmt_ci, _int_or_dash, _md_table
from .methods import _seed_se
from .records import RunRecord, _ci, paired_seed_mean


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
    res = paired_seed_mean(a, b, y_true, num_classes, n_resamples, seed, level)
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
    se = _seed_se(f1s(a), f1s(b))
    seed_resolved = None if se is None else abs(d) > 2 * se
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
    With ``bar`` = (accuracy, macro-F1) every run also gets its :func:`csba.bar.bar_check` status
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
    # The shipping bar is the paper's five on trifire; other methods' runs are experiments.
    barred = [i for i, (v, _, _) in enumerate(ordered) if v in PAPER_VARIANTS] if bar else []
    checked = None
    if barred:
        names = [ordered[i][0] for i in barred]
        checked = shipping_bar(
            y_true, [preds[i] for i in barred], names, c, *bar, n_resamples, seed, level
        )
    cis = [None] * total
    for j, i in enumerate(barred):
        cis[i] = checked["runs"][j]
    for i, ci in enumerate(cis):
        if ci is None:
            cis[i] = stats.bootstrap_metrics(y_true, preds[i], c, n_resamples, seed, level)
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
            + (
                [f"{ci['status']} ({ci['share']:.0%})" if "status" in ci else "experiment"]
                if bar
                else []
            )
        )
    pct = round(100 * level)
    headers = ["run", "seed", "kept epoch / run", "val macro-F1", "accuracy", "macro-F1"]
    headers += [f"F1 {classes[minority]}", "single view: accuracy / macro-F1"]
    if bar:
        headers.append(f"status: {_bar_text(bar)}")
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
    if checked is None:  # no bar asked for, or no run of the paper's five to hold to it
        return lines, None
    n_bar = len(barred)
    counts = checked["counts"]
    meet = checked["meet"]
    summary = {
        "accuracy": bar[0],
        "macro_f1": bar[1],
        "level": level,
        "met": checked["met"],
        "clearly_missing": [ordered[barred[i]][1].name for i in checked["clearly_missing"]],
        "variants": checked["variants"],
        "runs": n_bar,
        "meet": meet,
        "counts": counts,
        "expected": checked["expected"],
        "all_share": checked["all_share"],
        "per_run": [
            {"run": r.name, "variant": v, "seed": r.seed, **ci}
            for i, ((v, r, _), ci) in enumerate(zip(ordered, cis, strict=True))
            if i in barred
        ],
    }
    others = total - n_bar
    scope = (
        f" The bar holds the {n_bar} runs of the paper's five variants on trifire; the other "
        f"{others} (status: experiment) are experiments it does not apply to."
        if others
        else ""
    )
    lines += [
        "",
        f"Statuses in the table (the detail behind the shipping bar above; each run on its own "
        f"against {_bar_text(bar)}): {meet} of {n_bar} runs reach both thresholds, "
        f"{counts['clearly meets']} with both {pct}% intervals above them; of the {n_bar - meet} "
        f"that do not, {counts['misses within noise']} are within test-set noise of them (every "
        f"interval reaches its threshold) and {counts['clearly misses']} clearly miss. The "
        "percentage is the share of bootstrap resamples of the test set in which the run reaches "
        "both thresholds. On these resamples (a stand-in for another test set of the same size), "
        f"the same runs reach both {checked['expected']:.1f} times out of {n_bar} on average, "
        f"and all {n_bar} at once in {checked['all_share']:.1%} of resamples.{scope}",
    ]
    return lines, summary


def shipping_bar_parts(bar: Mapping[str, Any]) -> dict[str, Any]:
    """The shipping bar's judgement in words, part by part.

    ``bar`` is the ``bar`` entry of :func:`render_results_markdown`'s info (or any mapping with
    ``accuracy``, ``macro_f1`` (thresholds), ``met``, ``clearly_missing`` (run names),
    ``variants`` (``{variant: {"macro_f1": seed mean, "meets": bool}}``), ``runs`` (count) and
    optionally ``level``). Returns ``{"met": bool, "head": "Shipping bar: met" or "Shipping bar:
    not met", "runs": sentence on the runs that clearly miss, "variants": sentence on each
    variant's seed-mean macro-F1}``.
    """
    acc, f1 = float(bar["accuracy"]), float(bar["macro_f1"])
    pct = round(100 * float(bar.get("level", 0.95)))
    missing = list(bar["clearly_missing"])
    thresholds = f"accuracy {acc:.2f} or macro-F1 {f1:.2f}"
    if not missing:
        runs = (
            f"no run clearly misses {thresholds} (no run's own {pct}% bootstrap interval lies "
            "wholly below a threshold)"
        )
    else:
        runs = (
            f"{len(missing)} of {bar['runs']} runs clearly miss {thresholds} (their own {pct}% "
            f"bootstrap interval lies wholly below a threshold): {', '.join(missing)}"
        )
    variants = bar["variants"]
    cells = ", ".join(
        f"{v} {s['macro_f1']:.3f}" + ("" if s["meets"] else " (below)") for v, s in variants.items()
    )
    if all(s["meets"] for s in variants.values()):
        var = f"every variant's seed-mean macro-F1 is at least {f1:.2f} ({cells})"
    else:
        var = f"not every variant's seed-mean macro-F1 is at least {f1:.2f} ({cells})"
    met = bool(bar["met"])
    return {
        "met": met,
        "head": f"Shipping bar: {'met' if met else 'not met'}",
        "runs": runs[0].upper() + runs[1:] + ".",
        "variants": var[0].upper() + var[1:] + ".",
    }


def shipping_bar_text(bar: Mapping[str, Any]) -> str:
    """The shipping bar's judgement in one line of Markdown: ``**Shipping bar: met.** ...``."""
    p = shipping_bar_parts(bar)
    return f"**{p['head']}.** {p['runs']} {p['variants']}"
