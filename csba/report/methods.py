"""Every method against the baseline (Holm-corrected) and the conflict-gain analysis, as
Markdown for ``report`` and as numbers for ``compare --json``."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .. import stats
from ..conflict_gain import conflict_gain
from ..models import model_info
from .fmt import _fmt, _md_table
from .records import RunRecord, _ci, paired_seed_mean

__all__ = ["conflict_gain_lines", "method_table"]

ALPHA = 0.05  # family-wise error rate of the Holm-corrected comparisons


def _macro_f1(r: RunRecord, c: int) -> float:
    cm = stats.confusion_from_predictions(r.y_true, r.y_pred, c)
    return float(stats.metrics_from_confusion(cm)["macro_f1"])


def _seed_se(a: list[float], b: list[float]) -> float | None:
    """Welch standard error of a difference of seed means; a one-seed side borrows the other
    side's spread (seed noise belongs to the recipe more than to the head); None if unmeasured."""
    fa, fb = stats.aggregate_seeds(a), stats.aggregate_seeds(b)
    measured = [g["std"] for g in (fa, fb) if g["n"] > 1 and math.isfinite(g["std"])]
    if not measured:
        return None
    pooled = math.sqrt(sum(v**2 for v in measured) / len(measured))
    sa = fa["std"] if fa["n"] > 1 else pooled
    sb = fb["std"] if fb["n"] > 1 else pooled
    return math.sqrt(sa**2 / fa["n"] + sb**2 / fb["n"])


def _families(
    groups: Mapping[str, list[RunRecord]], baseline: str
) -> dict[str, tuple[str, list[str]]]:
    """Comparison families, name -> (reference method, methods compared with it), in the
    groups' order: the methods of each backbone against that backbone's baseline (named after
    the baseline), and the other backbones' baselines against ``baseline`` (named
    ``backbones``). A method whose reference has no runs here is left out."""
    fams: dict[str, tuple[str, list[str]]] = {}
    for v, rs in groups.items():
        ref = rs[0].reference
        if ref is None or ref not in groups or ref == v:
            continue
        name = "backbones" if rs[0].variant == "baseline" else ref
        fams.setdefault(name, (ref, []))[1].append(v)
    # each method with a control (csba.models.model_info) against that control, same backbone
    for v, rs in groups.items():
        control = _control(rs[0])
        if control is not None and control in groups:
            fams[f"controls:{v}"] = (control, [v])

    # the default backbone's methods first, then each other backbone's, the backbones, controls
    def key(f: str) -> tuple:
        kind = 2 if f.startswith("controls:") else 1 if f == "backbones" else 0
        return (kind, f != baseline, list(groups).index(fams[f][0]))

    return {f: fams[f] for f in sorted(fams, key=key)}


def _describe(r: RunRecord) -> str:
    """The registry's one-line description of the run's variant."""
    return model_info(r.variant)["description"]


def _control(r: RunRecord) -> str | None:
    """The method label of the run's control variant on its backbone, if the variant has one."""
    try:
        control = model_info(r.variant)["control"]
    except ValueError:  # a variant this version does not know
        return None
    return None if control is None else control + r.method[len(r.variant) :]


def method_table(
    groups: Mapping[str, list[RunRecord]],
    y_true: np.ndarray,
    num_classes: int,
    n_resamples: int,
    seed: int,
    level: float,
    baseline: str = "baseline",
) -> tuple[list[str], dict[str, Any]]:
    """Each method (group) against the baseline of its own backbone on seed-mean macro-F1: the
    paired bootstrap difference and interval, its two-sided bootstrap p-value, Holm's
    adjustment within the family of methods sharing that baseline, and the seed-spread check
    (|difference| > 2 seed standard errors). Baselines of other backbones form one more
    family, against ``baseline`` (the default backbone's). A method beats its baseline only
    when its Holm-adjusted p <= ALPHA, the difference is positive and the seed check does not
    fail. A method with a control variant (``model_info(v)["control"]``) is also compared
    with it, in a family of its own (``controls`` in the returned info)."""
    families = _families(groups, baseline)
    if not families:
        return [], {
            "baseline": baseline,
            "methods": {},
            "controls": {},
            "beats": [],
            "families": {},
        }
    rows, info, controls, beats = [], {}, {}, []
    for fam, (ref, members) in families.items():
        # a method against its control is kept apart: info holds it against its baseline
        out = controls if fam.startswith("controls:") else info
        base = groups[ref]
        base_f1 = [_macro_f1(r, num_classes) for r in base]
        for v in members:
            res = paired_seed_mean(groups[v], base, y_true, num_classes, n_resamples, seed, level)
            d, lo, hi = _ci(res["macro_f1"])
            f1 = [_macro_f1(r, num_classes) for r in groups[v]]
            out[v] = {
                "against": ref,
                "seeds": len(f1),
                "macro_f1": float(np.mean(f1)),
                "difference": d,
                "ci": [lo, hi],
                "p": res["p_value"]["macro_f1"],
                "seed_se": _seed_se(f1, base_f1),
            }
        adjusted = stats.holm([out[v]["p"] for v in members])
        for v, p_adj in zip(members, adjusted, strict=True):
            e = out[v]
            e["p_holm"] = p_adj
            seed_ok = e["seed_se"] is None or abs(e["difference"]) > 2 * e["seed_se"]
            if p_adj <= ALPHA and seed_ok:
                e["verdict"] = f"beats {ref}" if e["difference"] > 0 else f"worse than {ref}"
            else:
                e["verdict"] = "not resolved"
            if out is info and e["difference"] > 0 and e["verdict"] != "not resolved":
                beats.append(v)
            se = "-" if e["seed_se"] is None else _fmt(e["seed_se"])
            rows.append(
                [
                    v,
                    ref,
                    e["seeds"],
                    _fmt(e["macro_f1"]),
                    f"{e['difference']:+.3f} [{e['ci'][0]:+.3f}, {e['ci'][1]:+.3f}]",
                    f"{e['p']:.3f}",
                    f"{p_adj:.3f}",
                    se,
                    e["verdict"],
                ]
            )
    pct = round(100 * level)
    if beats:
        head = ", ".join(f"{v} beats {info[v]['against']}" for v in beats)
    else:
        head = "No method beats its baseline"
    fam_text = "; ".join(
        f"{len(members)} {'backbone' if f == 'backbones' else 'method'}"
        f"{'s' if len(members) != 1 else ''} against {ref}"
        for f, (ref, members) in families.items()
    )
    control_text = ""
    if controls:
        control_text = " A method that has a control variant is also compared with it, which " + (
            "isolates what the method adds: "
            + "; ".join(
                f"{v} against {e['against']} ({_describe(groups[e['against']][0])}): "
                f"{e['verdict']}, {e['difference']:+.3f} [{e['ci'][0]:+.3f}, {e['ci'][1]:+.3f}]"
                for v, e in controls.items()
            )
            + "."
        )
    lines = [
        "",
        "#### Every method against the baseline",
        "",
        f"{head} on seed-mean macro-F1 after Holm's correction within each family of "
        f"comparisons ({fam_text}; family-wise level {ALPHA:g}) and the seed-spread check. "
        "Each method is compared with the baseline of its own backbone; another backbone's "
        "baseline with the default one's."
        + control_text
        + " Difference: paired bootstrap of the seed means on "
        f"one test set ({pct}% interval); p: two-sided bootstrap p-value of no difference; "
        "seed SE: Welch standard error of the difference over seeds (a win must also exceed "
        "twice it).",
        "",
        _md_table(
            [
                "method",
                "against",
                "seeds",
                "macro-F1",
                "difference",
                "p",
                "p (Holm)",
                "seed SE",
                "verdict",
            ],
            rows,
            [False, False, True, True, True, True, True, True, False],
        ),
    ]
    return lines, {
        "baseline": baseline,
        "methods": info,
        "controls": controls,
        "beats": beats,
        "families": {
            f: {"against": ref, "methods": list(members)} for f, (ref, members) in families.items()
        },
        "alpha": ALPHA,
    }


def conflict_gain_lines(
    records: Sequence[RunRecord], n_resamples: int, seed: int, level: float
) -> tuple[list[str], dict[str, Any]]:
    """The conflict-gain section (csba.conflict_gain): one sentence and one table per backbone."""
    res = conflict_gain([r.meta for r in records], n_resamples, seed, level)
    if not res["backbones"]:
        return [], res
    lines = [
        "",
        "#### Does reducing gradient conflict help the minority class?",
        "",
        "Each method's seed mean of its change against the same-seed baseline (same backbone, "
        "image size and device kind): the minority class's mean gradient cosine with the other "
        "classes (higher = less conflict) and the global mean cosine, against the change in the "
        "minority class's F1 and in macro-F1. Spearman's rank correlation over methods, with a "
        "bootstrap interval that resamples methods (docs/diagnostics.md#conflict-gain).",
    ]
    for backbone, e in res["backbones"].items():
        rows = [
            [
                m["method"],
                m["seeds"],
                f"{m['d_cos_minority']:+.3f}",
                f"{m['d_conflict']:+.3f}",
                f"{m['d_f1_minority']:+.3f}",
                f"{m['d_macro_f1']:+.3f}",
            ]
            for m in e["methods"]
        ]
        glob = f" {e['global_sentence']}" if e["global_sentence"] else ""
        lines += [
            "",
            f"**{backbone}.** {e['sentence']}{glob}",
            "",
            _md_table(
                ["method", "seeds", "d cos minority", "d mean cos", "d F1 minority", "d macro-F1"],
                rows,
                [False] + [True] * 5,
            ),
        ]
    return lines, res
