"""Tests for csba.stats: bootstrap intervals, paired differences, seed aggregation, tables."""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    precision_recall_fscore_support,
)

from csba import stats
from csba.bar import bar_check, bar_check_runs
from csba.stats import (
    _confusion_batch,
    _resample_indices,
    aggregate_metric_dicts,
    aggregate_seeds,
    bootstrap_metrics,
    confusion_from_predictions,
    delta_table,
    metrics_from_confusion,
    paired_bootstrap_diff,
    per_class_table,
    seed_table,
    summary_table,
    to_latex_tabular,
)

ELPV_SUPPORTS = [377, 74, 27, 178]  # a 656-image test split shaped like ELPV's
CLASSES = ["functional", "possibly_defective", "likely_defective", "defective"]


def _labels(supports: list[int]) -> np.ndarray:
    return np.repeat(np.arange(len(supports)), supports)


def _noisy(y_true: np.ndarray, num_classes: int, error_rate: float, seed: int) -> np.ndarray:
    """Predictions that are wrong (shifted to the next class) on a random ``error_rate`` share."""
    rng = np.random.default_rng(seed)
    wrong = rng.random(y_true.size) < error_rate
    return np.where(wrong, (y_true + 1) % num_classes, y_true)


def _every_nth_wrong(y_true: np.ndarray, num_classes: int, nth: int) -> np.ndarray:
    """Deterministic predictions: every ``nth`` example of each class is wrong."""
    y_pred = y_true.copy()
    for c in range(num_classes):
        pos = np.flatnonzero(y_true == c)
        wrong = pos[::nth]
        y_pred[wrong] = (c + 1) % num_classes
    return y_pred


def _all_entries(result: dict) -> list[tuple[str, dict]]:
    """Every {"value", "ci"} entry of a bootstrap result, labelled."""
    out = [(m, result[m]) for m in stats.OVERALL_METRICS]
    for c, row in enumerate(result["per_class"]):
        out += [(f"{m}[{c}]", row[m]) for m in stats.PER_CLASS_METRICS]
    return out


def _width(entry: dict) -> float:
    return entry["ci"][1] - entry["ci"][0]


# ---------------------------------------------------------------------------------------------
# Known answers
# ---------------------------------------------------------------------------------------------


def test_perfect_classifier_has_value_one_and_degenerate_interval():
    y = _labels(ELPV_SUPPORTS)
    res = bootstrap_metrics(y, y, 4, n_resamples=500, seed=3)
    for label, entry in _all_entries(res):
        assert entry["value"] == 1.0, label
        assert entry["ci"] == [1.0, 1.0], label
    assert [row["support"] for row in res["per_class"]] == ELPV_SUPPORTS


def test_point_values_equal_sklearn():
    y_true = _labels(ELPV_SUPPORTS)
    rng = np.random.default_rng(7)
    y_pred = np.where(rng.random(y_true.size) < 0.6, y_true, rng.integers(0, 4, y_true.size))
    res = bootstrap_metrics(y_true, y_pred, 4, n_resamples=50)
    assert res["accuracy"]["value"] == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)
    assert res["macro_f1"]["value"] == pytest.approx(
        f1_score(y_true, y_pred, average="macro", zero_division=0), abs=1e-12
    )
    assert res["balanced_accuracy"]["value"] == pytest.approx(
        balanced_accuracy_score(y_true, y_pred), abs=1e-12
    )
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=range(4), zero_division=0)
    for c, row in enumerate(res["per_class"]):
        assert row["precision"]["value"] == pytest.approx(p[c], abs=1e-12)
        assert row["recall"]["value"] == pytest.approx(r[c], abs=1e-12)
        assert row["f1"]["value"] == pytest.approx(f[c], abs=1e-12)
        assert row["support"] == s[c]


def test_never_predicted_class_has_zero_precision():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 0, 0, 1, 1, 1])  # class 2 is never predicted
    res = bootstrap_metrics(y_true, y_pred, 3, n_resamples=100)
    row = res["per_class"][2]
    assert row["precision"] == {"value": 0.0, "ci": [0.0, 0.0]}
    assert row["recall"]["value"] == 0.0 and row["f1"]["value"] == 0.0
    # Hand-computed: class 0 P=2/3 R=1 F1=0.8; class 1 P=1/3 R=1/2 F1=0.4; class 2 F1=0.
    assert res["per_class"][0]["f1"]["value"] == pytest.approx(0.8)
    assert res["per_class"][1]["f1"]["value"] == pytest.approx(0.4)
    assert res["macro_f1"]["value"] == pytest.approx(0.4)
    assert res["accuracy"]["value"] == pytest.approx(0.5)


def test_confusion_from_predictions_keeps_absent_classes():
    cm = confusion_from_predictions([0, 1, 1], [0, 1, 0], 4)
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[0, 0] = expected[1, 1] = expected[1, 0] = 1
    np.testing.assert_array_equal(cm, expected)
    assert cm.dtype == np.int64


def test_metrics_from_confusion_batch_matches_single():
    cms = np.array([[[3, 1], [0, 2]], [[0, 0], [2, 4]]])
    batch = metrics_from_confusion(cms)
    for i in range(2):
        single = metrics_from_confusion(cms[i])
        for key in batch:
            np.testing.assert_allclose(batch[key][i], single[key])
    # Second matrix: class 0 has support 0 and is never predicted -> P = R = F1 = 0.
    np.testing.assert_allclose(batch["f1"][1], [0.0, 0.8])
    assert batch["balanced_accuracy"][1] == pytest.approx(4 / 6)  # only class 1 is present


def test_result_is_json_serialisable():
    import json

    y = _labels([10, 5])
    res = bootstrap_metrics(y, _every_nth_wrong(y, 2, 3), 2, n_resamples=20)
    assert json.loads(json.dumps(res))["per_class"][1]["support"] == 5
    assert res["config"]["n_resamples"] == 20 and res["config"]["stratified"] is True


# ---------------------------------------------------------------------------------------------
# Interval behaviour
# ---------------------------------------------------------------------------------------------


def test_intervals_shrink_as_test_set_grows():
    small = _labels([50, 30, 20])  # n = 100
    large = _labels([1000, 600, 400])  # n = 2000, same proportions
    res_small = bootstrap_metrics(small, _every_nth_wrong(small, 3, 5), 3, n_resamples=1000)
    res_large = bootstrap_metrics(large, _every_nth_wrong(large, 3, 5), 3, n_resamples=1000)
    # Same error rate, so similar point values ...
    assert res_small["accuracy"]["value"] == pytest.approx(res_large["accuracy"]["value"])
    # ... but the larger test set gives clearly narrower intervals (about sqrt(20) ~ 4.5x).
    for metric in ("accuracy", "macro_f1", "balanced_accuracy"):
        assert _width(res_large[metric]) < 0.5 * _width(res_small[metric]), metric
    for c in range(3):
        assert _width(res_large["per_class"][c]["f1"]) < 0.5 * _width(
            res_small["per_class"][c]["f1"]
        )


def test_higher_level_gives_wider_interval():
    y = _labels(ELPV_SUPPORTS)
    y_pred = _noisy(y, 4, 0.3, seed=1)
    r90 = bootstrap_metrics(y, y_pred, 4, n_resamples=1000, level=0.90)
    r99 = bootstrap_metrics(y, y_pred, 4, n_resamples=1000, level=0.99)
    assert _width(r99["macro_f1"]) > _width(r90["macro_f1"])


def test_same_seed_same_interval_different_seed_different():
    y = _labels(ELPV_SUPPORTS)
    y_pred = _noisy(y, 4, 0.3, seed=2)
    a = bootstrap_metrics(y, y_pred, 4, n_resamples=300, seed=11)
    b = bootstrap_metrics(y, y_pred, 4, n_resamples=300, seed=11)
    c = bootstrap_metrics(y, y_pred, 4, n_resamples=300, seed=12)
    assert a == b
    assert a["macro_f1"]["ci"] != c["macro_f1"]["ci"]
    assert a["macro_f1"]["value"] == c["macro_f1"]["value"]  # point value is seed-free


def test_stratified_resampling_keeps_class_supports():
    y = _labels(ELPV_SUPPORTS)
    idx = _resample_indices(y, 200, seed=0, stratified=True)
    assert idx.shape == (200, y.size)
    supports = np.stack([np.bincount(y[row], minlength=4) for row in idx])
    assert (supports == np.array(ELPV_SUPPORTS)).all()
    # The confusion batch agrees: every resample's row sums are the original supports.
    cms = _confusion_batch(y, _noisy(y, 4, 0.3, 0), idx, 4)
    assert (cms.sum(axis=2) == np.array(ELPV_SUPPORTS)).all()
    assert (cms.sum(axis=(1, 2)) == y.size).all()
    # Sanity: the draws are real resamples (with repetitions), not the identity.
    assert any(len(np.unique(row)) < y.size for row in idx)


def test_unstratified_resampling_lets_supports_vary():
    y = _labels(ELPV_SUPPORTS)
    idx = _resample_indices(y, 200, seed=0, stratified=False)
    supports = np.stack([np.bincount(y[row], minlength=4) for row in idx])
    assert (supports.sum(axis=1) == y.size).all()
    assert len({tuple(s) for s in supports}) > 1


def _reference_samples(y_true, y_pred, num_classes, indices):
    """Slow reference: sklearn metrics on each resample, one at a time."""
    labels = list(range(num_classes))
    rows = {k: [] for k in stats.METRIC_NAMES}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for row in indices:
            t, p = y_true[row], y_pred[row]
            rows["accuracy"].append(accuracy_score(t, p))
            rows["macro_f1"].append(f1_score(t, p, labels=labels, average="macro", zero_division=0))
            rows["balanced_accuracy"].append(balanced_accuracy_score(t, p))
            pr, rc, f1, _ = precision_recall_fscore_support(t, p, labels=labels, zero_division=0)
            rows["precision"].append(pr)
            rows["recall"].append(rc)
            rows["f1"].append(f1)
    return {k: np.array(v) for k, v in rows.items()}


@pytest.mark.parametrize("stratified", [True, False])
def test_vectorised_intervals_match_slow_sklearn_loop(stratified):
    y_true = _labels([60, 25, 10, 5])
    rng = np.random.default_rng(5)
    y_pred = np.where(rng.random(y_true.size) < 0.55, y_true, rng.integers(0, 4, y_true.size))
    n_resamples, seed, level = 150, 9, 0.9
    res = bootstrap_metrics(y_true, y_pred, 4, n_resamples, seed, level, stratified)
    idx = _resample_indices(y_true, n_resamples, seed, stratified)
    ref = _reference_samples(y_true, y_pred, 4, idx)
    lo_q, hi_q = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    for metric in stats.OVERALL_METRICS:
        expected = np.percentile(ref[metric], [lo_q, hi_q])
        np.testing.assert_allclose(res[metric]["ci"], expected, atol=1e-12, err_msg=metric)
    for metric in stats.PER_CLASS_METRICS:
        expected = np.percentile(ref[metric], [lo_q, hi_q], axis=0)  # (2, C)
        got = np.array([row[metric]["ci"] for row in res["per_class"]]).T
        np.testing.assert_allclose(got, expected, atol=1e-12, err_msg=metric)


def test_chunked_confusion_batch_equals_unchunked(monkeypatch):
    y = _labels(ELPV_SUPPORTS)
    y_pred = _noisy(y, 4, 0.25, seed=4)
    whole = bootstrap_metrics(y, y_pred, 4, n_resamples=100, seed=1)
    monkeypatch.setattr(stats, "_CHUNK_CELLS", 7 * y.size + 3)  # 7 resamples per chunk
    chunked = bootstrap_metrics(y, y_pred, 4, n_resamples=100, seed=1)
    assert whole == chunked


# ---------------------------------------------------------------------------------------------
# Paired differences
# ---------------------------------------------------------------------------------------------


def test_paired_diff_of_run_with_itself_is_exactly_zero():
    y = _labels(ELPV_SUPPORTS)
    y_pred = _noisy(y, 4, 0.35, seed=8)
    res = paired_bootstrap_diff(y, y_pred, y_pred, 4, n_resamples=500)
    for label, entry in _all_entries(res):
        assert entry["value"] == 0.0, label
        assert entry["ci"] == [0.0, 0.0], label


def test_paired_diff_of_clearly_better_run_is_above_zero():
    y = _labels(ELPV_SUPPORTS)
    worse = _noisy(y, 4, 0.45, seed=1)
    better = np.where(np.random.default_rng(2).random(y.size) < 0.7, y, worse)  # fixes 70%
    res = paired_bootstrap_diff(y, worse, better, 4, n_resamples=1000)
    for metric in stats.OVERALL_METRICS:
        assert res[metric]["ci"][0] > 0.0, metric
        assert res[metric]["value"] > 0.0
    # Direction: swapping the runs flips the sign.
    rev = paired_bootstrap_diff(y, better, worse, 4, n_resamples=1000)
    assert rev["macro_f1"]["value"] == pytest.approx(-res["macro_f1"]["value"])
    assert rev["macro_f1"]["ci"][1] < 0.0


def test_paired_interval_is_narrower_than_unpaired_noise():
    # Two runs that disagree on few examples: the paired interval of the difference is much
    # narrower than either run's own interval (the shared test-set noise cancels).
    y = _labels(ELPV_SUPPORTS)
    a = _noisy(y, 4, 0.3, seed=3)
    b = a.copy()
    b[:10] = y[:10]
    diff = paired_bootstrap_diff(y, a, b, 4, n_resamples=1000)
    single = bootstrap_metrics(y, a, 4, n_resamples=1000)
    assert _width(diff["accuracy"]) < 0.5 * _width(single["accuracy"])
    assert diff["accuracy"]["value"] == pytest.approx(accuracy_score(y, b) - accuracy_score(y, a))


# ---------------------------------------------------------------------------------------------
# Input validation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("y_true", "y_pred", "num_classes"),
    [
        ([0, 1, 2], [0, 1, 3], 3),  # prediction out of range
        ([0, -1, 2], [0, 1, 2], 3),  # negative label
        ([0, 1, 2], [0, 1], 3),  # length mismatch
        ([], [], 3),  # empty
        ([0, 1], [0, 1], 0),  # no classes
        ([0.5, 1], [0, 1], 2),  # non-integer label
    ],
)
def test_bad_inputs_raise_value_error(y_true, y_pred, num_classes):
    with pytest.raises(ValueError):
        bootstrap_metrics(y_true, y_pred, num_classes, n_resamples=10)


def test_bad_level_and_resamples_raise():
    with pytest.raises(ValueError):
        bootstrap_metrics([0, 1], [0, 1], 2, n_resamples=10, level=1.0)
    with pytest.raises(ValueError):
        bootstrap_metrics([0, 1], [0, 1], 2, n_resamples=0)


# ---------------------------------------------------------------------------------------------
# Seed aggregation
# ---------------------------------------------------------------------------------------------


def test_aggregate_seeds_known_answers():
    agg = aggregate_seeds([1.0, 2.0, 3.0, 4.0])
    assert agg["mean"] == pytest.approx(2.5)
    assert agg["std"] == pytest.approx(math.sqrt(5 / 3))  # ddof = 1
    assert (agg["min"], agg["max"], agg["n"]) == (1.0, 4.0, 4)

    one = aggregate_seeds([0.7])
    assert one == {"mean": 0.7, "std": 0.0, "min": 0.7, "max": 0.7, "n": 1}

    empty = aggregate_seeds([])
    assert empty["n"] == 0 and math.isnan(empty["mean"]) and math.isnan(empty["std"])

    assert math.isnan(aggregate_seeds([0.5, float("nan")])["mean"])


def test_aggregate_metric_dicts_over_bootstrap_results():
    y = _labels([40, 20])
    runs = [bootstrap_metrics(y, _noisy(y, 2, 0.2, s), 2, n_resamples=20) for s in range(3)]
    agg = aggregate_metric_dicts(runs)
    values = [r["macro_f1"]["value"] for r in runs]
    assert agg["macro_f1"]["mean"] == pytest.approx(np.mean(values))
    assert agg["macro_f1"]["std"] == pytest.approx(np.std(values, ddof=1))
    assert agg["per_class"][1]["f1"]["n"] == 3
    assert agg["per_class"][0]["support"]["std"] == 0.0  # stratified: supports identical
    assert agg["config"]["stratified"] is True  # equal non-numeric leaves are kept

    flat = aggregate_metric_dicts([{"accuracy": 0.5}, {"accuracy": 0.7}])
    assert flat["accuracy"]["mean"] == pytest.approx(0.6)

    with pytest.raises(ValueError):
        aggregate_metric_dicts([{"accuracy": 0.5}, {"macro_f1": 0.7}])
    with pytest.raises(ValueError):
        aggregate_metric_dicts([])


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


def _runs() -> list[dict]:
    y = _labels(ELPV_SUPPORTS)
    return [
        {"name": "baseline-s0", "classes": CLASSES, "y_true": y, "y_pred": _noisy(y, 4, 0.4, 0)},
        {"name": "csba-s0", "classes": CLASSES, "y_true": y, "y_pred": _noisy(y, 4, 0.1, 1)},
        {"name": "csba-s1", "classes": CLASSES, "y_true": y, "y_pred": _noisy(y, 4, 0.2, 2)},
    ]


def test_per_class_table_layout_and_values():
    runs = _runs()
    df = per_class_table(runs, n_resamples=100)
    assert list(df.columns) == ["run", "class", "metric", "value", "ci_low", "ci_high", "support"]
    assert len(df) == 3 * 4 * 3
    row = df[(df.run == "csba-s0") & (df["class"] == "likely_defective") & (df.metric == "f1")]
    expected = f1_score(runs[1]["y_true"], runs[1]["y_pred"], labels=range(4), average=None)[2]
    assert row["value"].item() == pytest.approx(expected)
    assert row["support"].item() == 27
    assert (df.ci_low <= df.ci_high).all()


def test_per_class_table_csv_round_trip():
    df = per_class_table(_runs(), n_resamples=50)
    back = pd.read_csv(io.StringIO(df.to_csv(index=False)))
    pd.testing.assert_frame_equal(back, df, check_exact=False, rtol=1e-12)


def test_delta_table_against_reference():
    runs = _runs()
    df = delta_table(runs, reference="baseline-s0", n_resamples=300, include_overall=True)
    assert set(df.run) == {"csba-s0", "csba-s1"}
    assert set(df.reference) == {"baseline-s0"}
    assert len(df) == 2 * (4 * 3 + 3)
    macro = df[(df.run == "csba-s0") & (df.metric == "macro_f1")]
    assert macro["class"].item() == "(overall)"
    assert macro["ci_low"].item() > 0 and bool(macro["significant"].item())
    f1 = df[(df.run == "csba-s0") & (df["class"] == "functional") & (df.metric == "f1")]
    y = runs[0]["y_true"]
    expected = (
        f1_score(y, runs[1]["y_pred"], average=None)[0]
        - f1_score(y, runs[0]["y_pred"], average=None)[0]
    )
    assert f1["delta"].item() == pytest.approx(expected)
    # Index and name select the same reference.
    by_index = delta_table(runs, reference=0, n_resamples=300, include_overall=True)
    pd.testing.assert_frame_equal(by_index, df)


def test_delta_table_rejects_different_test_sets():
    runs = _runs()
    runs[1] = {**runs[1], "y_true": runs[1]["y_true"][::-1]}
    with pytest.raises(ValueError, match="different test set"):
        delta_table(runs, n_resamples=10)


def test_summary_table_values():
    runs = _runs()
    df = summary_table(runs, n_resamples=100)
    assert list(df.run) == ["baseline-s0", "csba-s0", "csba-s1"]
    for m in stats.OVERALL_METRICS:
        assert {m, f"{m}_ci_low", f"{m}_ci_high"} <= set(df.columns)
    assert df.loc[1, "accuracy"] == pytest.approx(
        accuracy_score(runs[1]["y_true"], runs[1]["y_pred"])
    )
    assert (df.accuracy_ci_low <= df.accuracy_ci_high).all()


def test_seed_table_groups_by_variant():
    runs = _runs()
    df = seed_table(runs)
    assert set(df.variant) == {"baseline", "csba"}  # "-s<seed>" stripped from names
    row = df[(df.variant == "csba") & (df.metric == "macro_f1")]
    values = [
        f1_score(r["y_true"], r["y_pred"], average="macro", zero_division=0) for r in runs[1:]
    ]
    assert row["mean"].item() == pytest.approx(np.mean(values))
    assert row["std"].item() == pytest.approx(np.std(values, ddof=1))
    assert row["n"].item() == 2 and row["runs"].item() == "csba-s0, csba-s1"
    base = df[(df.variant == "baseline") & (df.metric == "accuracy")]
    assert base["std"].item() == 0.0 and base["n"].item() == 1
    # An explicit "variant" key wins over the name.
    explicit = seed_table([{**r, "variant": "all"} for r in runs])
    assert set(explicit.variant) == {"all"}


def test_to_latex_tabular_is_complete_and_escaped():
    df = pd.DataFrame(
        {
            "run": ["csba_s0", "base 100%"],
            "ΔF1": [0.12345, float("nan")],
            "n": [656, 656],
            "significant": [True, False],
        }
    )
    tex = to_latex_tabular(df)
    assert tex.startswith(r"\begin{tabular}{lrrl}")
    assert tex.endswith(r"\end{tabular}")
    assert r"csba\_s0" in tex and r"base 100\%" in tex and r"$\Delta$F1" in tex
    assert "0.123" in tex and "--" in tex and "yes" in tex
    body = [line for line in tex.splitlines() if line.endswith(r"\\")]
    assert len(body) == 1 + len(df)  # header + one line per row
    assert all(line.count("&") == 3 for line in body)
    plain = to_latex_tabular(per_class_table(_runs()[:1], n_resamples=20), booktabs=False)
    assert plain.startswith(r"\begin{tabular}") and plain.endswith(r"\end{tabular}")
    assert r"\toprule" not in plain and r"possibly\_defective" in plain


# ---------------------------------------------------------------------------------------------
# Property test
# ---------------------------------------------------------------------------------------------


@st.composite
def _labelled(draw):
    num_classes = draw(st.integers(1, 5))
    n = draw(st.integers(1, 40))
    labels = st.lists(st.integers(0, num_classes - 1), min_size=n, max_size=n)
    return num_classes, np.array(draw(labels)), np.array(draw(labels))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_labelled(), seed=st.integers(0, 2**32 - 1), stratified=st.booleans())
def test_property_intervals_ordered_and_in_unit_range(data, seed, stratified):
    num_classes, y_true, y_pred = data
    res = bootstrap_metrics(y_true, y_pred, num_classes, 40, seed, 0.95, stratified)
    for label, entry in _all_entries(res):
        lo, hi = entry["ci"]
        assert 0.0 <= lo <= hi <= 1.0, label
        assert 0.0 <= entry["value"] <= 1.0, label
    assert res["accuracy"]["value"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert res["macro_f1"]["value"] == pytest.approx(
        f1_score(y_true, y_pred, labels=range(num_classes), average="macro", zero_division=0)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected_bacc = balanced_accuracy_score(y_true, y_pred)
    assert res["balanced_accuracy"]["value"] == pytest.approx(expected_bacc)

    diff = paired_bootstrap_diff(y_true, y_pred, y_true, num_classes, 40, seed, 0.95, stratified)
    for label, entry in _all_entries(diff):
        lo, hi = entry["ci"]
        assert -1.0 <= lo <= hi <= 1.0, label


# --------------------------------------------------------------------------------------------
# Per-run bar
# --------------------------------------------------------------------------------------------


def test_bar_check_known_answers_for_constant_metrics():
    # Always predicting the majority of a 60/40 split: under stratified resampling the class
    # supports are fixed, so accuracy is exactly 0.6 and macro-F1 exactly (0.75 + 0) / 2 in
    # every resample and both intervals collapse to their point values.
    y = np.array([0] * 60 + [1] * 40)
    pred = np.zeros_like(y)
    r = bar_check(y, pred, 2, 0.6, 0.3, n_resamples=200)
    assert r["accuracy"] == {"value": 0.6, "ci": [0.6, 0.6]}
    assert r["macro_f1"]["value"] == pytest.approx(0.375)
    assert r["macro_f1"]["ci"] == pytest.approx([0.375, 0.375])
    assert (r["meets"], r["status"], r["share"]) == (True, "clearly meets", 1.0)
    assert r["bar"] == {"accuracy": 0.6, "macro_f1": 0.3}
    r = bar_check(y, pred, 2, 0.61, 0.3, n_resamples=200)
    assert (r["meets"], r["status"], r["share"]) == (False, "clearly misses", 0.0)
    r = bar_check(y, pred, 2, 0.6, 0.4, n_resamples=200)  # macro-F1 alone misses
    assert (r["meets"], r["status"], r["share"]) == (False, "clearly misses", 0.0)


def _slow_bar_shares(y, preds, bar, n_resamples, seed):
    """Reference: per-resample sklearn metrics on the same indices, run by run."""
    idx = stats._resample_indices(y, n_resamples, seed)
    passed = np.array(
        [
            [
                accuracy_score(y[i], p[i]) >= bar[0]
                and f1_score(y[i], p[i], labels=[0, 1], average="macro", zero_division=0) >= bar[1]
                for i in idx
            ]
            for p in preds
        ]
    )  # (runs, R)
    return passed.mean(1), passed.sum(0).mean(), passed.all(0).mean()


def test_bar_check_status_and_shares_against_sklearn_loop():
    # 50/50 classes, 30 of each right: accuracy 0.6 with a bootstrap spread of several points.
    y = np.array([0] * 50 + [1] * 50)
    p1 = y.copy()
    p1[30:50] = 1
    p1[80:] = 0
    p2 = y.copy()
    p2[45:50] = 1  # accuracy 0.95
    bar = (0.59, 0.5)
    res = bar_check_runs(y, [p1, p2], 2, *bar, n_resamples=300, seed=3)
    shares, expected, all_share = _slow_bar_shares(y, [p1, p2], bar, 300, 3)
    assert [r["share"] for r in res["runs"]] == pytest.approx(list(shares))
    assert res["expected"] == pytest.approx(expected)
    assert res["all_share"] == pytest.approx(all_share)
    assert 0.0 < res["runs"][0]["share"] < 1.0
    assert res["runs"][0]["accuracy"]["value"] == pytest.approx(0.6)
    lo, hi = res["runs"][0]["accuracy"]["ci"]
    assert lo < 0.59 < 0.6 < hi
    assert [r["status"] for r in res["runs"]] == ["meets", "clearly meets"]
    assert res["counts"] == {
        "clearly meets": 1,
        "meets": 1,
        "misses within noise": 0,
        "clearly misses": 0,
    }
    assert res["meet"] == 2
    # The same run against a bar just above its point value: missed, but within noise.
    within = bar_check(y, p1, 2, 0.61, 0.5, n_resamples=300, seed=3)
    assert (within["meets"], within["status"]) == (False, "misses within noise")
    # bar_check is bar_check_runs of one run: same intervals as bootstrap_metrics.
    single = bar_check(y, p1, 2, *bar, n_resamples=300, seed=3)
    boot = stats.bootstrap_metrics(y, p1, 2, n_resamples=300, seed=3)
    assert single["accuracy"] == boot["accuracy"]
    assert single["macro_f1"] == boot["macro_f1"]
    assert single["share"] == res["runs"][0]["share"]


@pytest.mark.parametrize("bad", [-0.1, 1.5, "0.6", None])
def test_bar_check_rejects_bad_thresholds(bad):
    y = np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match="bar_accuracy"):
        bar_check(y, y, 2, bad, 0.5)
    with pytest.raises(ValueError, match="at least one"):
        bar_check_runs(y, [], 2, 0.5, 0.5)


def test_shipping_bar_known_answers_for_both_parts():
    from csba.bar import SHIPPING_BAR, shipping_bar

    assert SHIPPING_BAR == (0.60, 0.45)
    y = np.repeat([0, 1], 50)
    perfect = y.copy()
    majority = np.zeros_like(y)  # accuracy 0.5 on every stratified resample: clearly misses 0.60
    res = shipping_bar(y, [perfect, perfect], ["a", "b"], 2, n_resamples=200)
    assert res["met"] and res["clearly_missing"] == []
    assert res["variants"] == {
        "a": {"runs": 1, "macro_f1": 1.0, "meets": True},
        "b": {"runs": 1, "macro_f1": 1.0, "meets": True},
    }
    res = shipping_bar(y, [perfect, majority], ["a", "a"], 2, n_resamples=200)
    assert not res["met"] and res["clearly_missing"] == [1]
    # seed mean of variant a: (1 + 1/3) / 2, macro-F1 of the majority predictor being (2/3 + 0) / 2
    assert res["variants"]["a"]["macro_f1"] == pytest.approx((1 + 1 / 3) / 2)
    assert res["variants"]["a"]["meets"]

    # Part 2 alone: 20 images, one run with macro-F1 0.375 whose interval still reaches 0.45
    # (misses within noise, so part 1 holds) while its variant's mean is below 0.45.
    y = np.repeat([0, 1], 10)
    noisy = np.array([0] * 6 + [1] * 4 + [0] * 8 + [1] * 2)  # acc 0.4; F1 0.5 and 0.25
    f1 = f1_score(y, noisy, average="macro")
    assert f1 == pytest.approx(0.375)
    res = shipping_bar(y, [noisy], ["c"], 2, 0.0, 0.45, n_resamples=500)
    assert res["clearly_missing"] == [] and res["runs"][0]["status"] == "misses within noise"
    assert res["variants"]["c"] == {"runs": 1, "macro_f1": pytest.approx(f1), "meets": False}
    assert not res["met"]
    with pytest.raises(ValueError, match="2 prediction arrays but 1 variants"):
        shipping_bar(y, [noisy, noisy], ["c"], 2)
