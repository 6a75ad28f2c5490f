"""Known answers for the verdict table: Holm's adjustment and the comparison families (every
method against the baseline of its own backbone; other backbones' baselines against trifire's)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from csba import stats
from csba.models import model_info
from csba.report.markdown import _tradeoff_lines
from csba.report.methods import method_table
from csba.report.records import RunRecord

C = 2
Y = np.array([0] * 60 + [1] * 20)  # (80,) test labels, class 1 the minority


def _preds(wrong: int, seed: int) -> np.ndarray:
    """Predictions with ``wrong`` minority images called majority (which ones: by seed)."""
    y = Y.copy()
    rng = np.random.default_rng(seed)
    y[60 + rng.choice(20, size=wrong, replace=False)] = 0
    return y


def _rec(variant: str, seed: int, wrong: int, backbone: str = "trifire") -> RunRecord:
    meta = {
        "variant": variant,
        "num_classes": C,
        "classes": ["ok", "bad"],
        "config": {"seed": seed, "backbone": backbone},
    }
    return RunRecord(f"{variant}-{backbone}-s{seed}", Path("."), meta, Y, _preds(wrong, seed))


def _groups(records: list[RunRecord]) -> dict[str, list[RunRecord]]:
    out: dict[str, list[RunRecord]] = {}
    for r in records:
        out.setdefault(r.method, []).append(r)
    return out


def test_holm_known_answer():
    # sorted 0.01, 0.03, 0.04 -> 3 x 0.01, 2 x 0.03, max(1 x 0.04, 0.06): monotone step-down
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_reference_is_the_baseline_of_the_same_backbone():
    assert _rec("baseline", 0, 0).reference is None
    assert _rec("csba", 0, 0).reference == "baseline"
    assert _rec("csba", 0, 0, "resnet18").reference == "baseline-resnet18"
    assert _rec("baseline", 0, 0, "resnet18").reference == "baseline"


def test_method_table_families_and_known_differences():
    recs = [
        *(_rec("baseline", s, 14) for s in range(3)),
        *(_rec("ldam_drw", s, 0) for s in range(3)),  # every minority image right
        *(_rec("csba", s, 14) for s in range(3)),  # the baseline's very predictions
        _rec("baseline", 0, 10, "resnet18"),
        _rec("csba", 0, 4, "resnet18"),
    ]
    groups = _groups(recs)
    lines, info = method_table(groups, Y, C, 200, 0, 0.95)
    assert info["families"] == {
        "baseline": {"against": "baseline", "methods": ["ldam_drw", "csba"]},
        "baseline-resnet18": {"against": "baseline-resnet18", "methods": ["csba-resnet18"]},
        "backbones": {"against": "baseline", "methods": ["baseline-resnet18"]},
    }
    m = info["methods"]

    def f1(rs):
        return np.mean(
            [stats.metrics_from_confusion(stats.confusion_from_predictions(Y, r.y_pred, C))
             ["macro_f1"] for r in rs]
        )  # fmt: skip

    # the difference is the paired difference of seed means, against the own backbone's baseline
    for v in ("ldam_drw", "csba", "csba-resnet18", "baseline-resnet18"):
        ref = groups[m[v]["against"]]
        assert m[v]["difference"] == pytest.approx(f1(groups[v]) - f1(ref), abs=1e-9)
    assert m["csba-resnet18"]["against"] == "baseline-resnet18"
    assert m["csba"]["difference"] == 0 and m["csba"]["verdict"] == "not resolved"
    # ldam_drw: identical tests on 3 seeds, a large gain: Holm over its family of 2 keeps it
    assert m["ldam_drw"]["verdict"] == "beats baseline" and info["beats"] == ["ldam_drw"]
    assert m["ldam_drw"]["p_holm"] == pytest.approx(stats.holm([m["ldam_drw"]["p"], 1.0])[0])
    # a one-member family is not adjusted
    assert m["csba-resnet18"]["p_holm"] == m["csba-resnet18"]["p"]
    text = "\n".join(lines)
    assert "2 methods against baseline; 1 method against baseline-resnet18; " in text
    assert "1 backbone against baseline" in text
    assert "| csba-resnet18 | baseline-resnet18 | 1 |" in text


def test_a_method_is_also_compared_with_its_control():
    assert model_info("pcgrad")["control"] == "pcgrad_control"
    assert model_info("csba")["control"] is None
    recs = [
        *(_rec("baseline", s, 10) for s in range(3)),
        *(_rec("pcgrad", s, 2) for s in range(3)),
        *(_rec("pcgrad_control", s, 6) for s in range(3)),
    ]
    groups = _groups(recs)
    lines, info = method_table(groups, Y, C, 200, 0, 0.95)
    fams = info["families"]
    assert fams["baseline"]["methods"] == ["pcgrad", "pcgrad_control"]
    assert fams["controls:pcgrad"] == {"against": "pcgrad_control", "methods": ["pcgrad"]}
    # against its baseline in "methods", against its control in "controls": neither overwritten
    assert info["methods"]["pcgrad"]["against"] == "baseline"
    ctl = info["controls"]["pcgrad"]
    assert ctl["against"] == "pcgrad_control" and ctl["p_holm"] == ctl["p"]
    f1 = {
        v: np.mean(
            [stats.metrics_from_confusion(stats.confusion_from_predictions(Y, r.y_pred, C))
             ["macro_f1"] for r in groups[v]]
        )
        for v in groups
    }  # fmt: skip
    assert ctl["difference"] == pytest.approx(f1["pcgrad"] - f1["pcgrad_control"], abs=1e-9)
    assert info["methods"]["pcgrad"]["difference"] == pytest.approx(
        f1["pcgrad"] - f1["baseline"], abs=1e-9
    )
    text = "\n".join(lines)
    assert "| pcgrad | pcgrad_control | 3 |" in text and "| pcgrad | baseline | 3 |" in text
    assert "pcgrad against pcgrad_control (PCGrad's control" in text


def test_tradeoff_conflict_change_is_against_the_same_backbone():
    recs = [_rec("baseline", 0, 0), _rec("baseline", 0, 0, "resnet18")]
    recs.append(_rec("csba", 0, 0, "resnet18"))
    groups = _groups(recs)
    gcms = {
        "baseline": [{"mean": -0.30}],
        "baseline-resnet18": [{"mean": -0.20}],
        "csba-resnet18": [{"mean": -0.25}],
    }
    text = "\n".join(_tradeoff_lines(groups, list(groups), gcms))
    assert "| csba-resnet18 | 1 | - | - | -0.050 vs baseline-resnet18 |" in text
    assert "| baseline-resnet18 | 1 | - | - | 0.100 vs baseline |" in text
    assert "| baseline | 1 | - | - | - |" in text


def test_a_head_on_a_method_is_compared_with_the_method_alone():
    """csba+ldam_drw's control is ldam_drw (what the CSBA gates add to LDAM-DRW): a family of
    its own, as pcgrad against pcgrad_control; without a baseline it is the only family."""
    recs = [
        *(_rec("ldam_drw", s, 6) for s in range(3)),
        *(_rec("csba+ldam_drw", s, 3) for s in range(3)),
    ]
    groups = _groups(recs)
    lines, info = method_table(groups, Y, C, 200, 0, 0.95)
    assert info["families"] == {
        "controls:csba+ldam_drw": {"against": "ldam_drw", "methods": ["csba+ldam_drw"]}
    }
    ctl = info["controls"]["csba+ldam_drw"]
    assert ctl["against"] == "ldam_drw" and ctl["difference"] > 0
    text = "\n".join(lines)
    assert "| csba+ldam_drw | ldam_drw | 3 |" in text
    # with a baseline beside them, both are also compared with it
    with_base = _groups([*recs, *(_rec("baseline", s, 10) for s in range(3))])
    _, info = method_table(with_base, Y, C, 200, 0, 0.95)
    assert info["families"]["baseline"]["methods"] == ["ldam_drw", "csba+ldam_drw"]
    assert info["families"]["controls:csba+ldam_drw"]["against"] == "ldam_drw"
