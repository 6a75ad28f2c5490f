"""Tests for csba.report: run comparison (tables, JSON, files, figures) and the README section.

A module fixture trains three tiny real runs (32 px, 2 epochs, a 3-class image folder) once;
further runs are derived from their run.json with chosen predictions, so that intervals,
deltas, seed spreads and verdicts can be checked against known answers.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from csba import report, stats
from csba.cli import main as cli_main
from csba.report import (
    RESULTS_END,
    RESULTS_START,
    compare_runs,
    render_results_markdown,
    replace_between_markers,
    write_readme_results,
)
from csba.store import RunError, atomic_write_json, read_run_json

CLASSES = ["alpha", "beta", "gamma"]
PER_CLASS_IMAGES = [30, 30, 15]  # gamma is the minority class


def _make_imagefolder(root: Path) -> None:
    """Class folders of 32x32 PNGs: each class brightens its own colour channel."""
    rng = np.random.default_rng(0)
    for c, (name, n) in enumerate(zip(CLASSES, PER_CLASS_IMAGES, strict=True)):
        d = root / name
        d.mkdir(parents=True)
        for i in range(n):
            a = rng.integers(0, 80, size=(32, 32, 3)).astype(np.uint8)
            a[:, :, c] += 150
            Image.fromarray(a).save(d / f"{i:03d}.png")


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory):
    """Three real run folders: baseline seeds 0 and 1, csba seed 0 (same test set)."""
    from csba.train import TrainConfig, train

    base = tmp_path_factory.mktemp("report_runs")
    data = base / "data"
    _make_imagefolder(data)
    out = base / "runs"
    dirs = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CSBA_CACHE", str(base / "cache"))
        for variant, seed in (("baseline", 0), ("baseline", 1), ("csba", 0)):
            cfg = TrainConfig(
                dataset="imagefolder",
                data_root=str(data),
                variant=variant,
                seed=seed,
                image_size=32,
                epochs=2,
                lr=1e-3,
                device="cpu",
                precision="fp32",
                out=str(out),
            )
            meta = train(cfg)
            dirs[(variant, seed)] = Path(meta["run_dir"])
    return SimpleNamespace(root=out, dirs=dirs, base=base)


def _derive(
    src: Path,
    dst: Path,
    *,
    variant: str | None = None,
    seed: int | None = None,
    y_true=None,
    y_pred=None,
    diagnostics=None,
    drop: tuple[str, ...] = (),
) -> Path:
    """A run folder whose run.json is ``src``'s with the given fields replaced."""
    meta = read_run_json(src)
    meta = copy.deepcopy(meta)
    if variant is not None:
        meta["variant"] = variant
        meta["config"]["variant"] = variant
    if seed is not None:
        meta["config"]["seed"] = seed
    test = meta["predictions"]["test"]
    if y_true is not None:
        test["y_true"] = [int(v) for v in y_true]
        test.pop("probs", None)
        meta.pop("split_indices", None)  # the stored split no longer matches these labels
    if y_pred is not None:
        test["y_pred"] = [int(v) for v in y_pred]
        test.pop("probs", None)
    if diagnostics is not None:
        meta["diagnostics"] = diagnostics
    for key in drop:
        meta.pop(key, None)
    dst.mkdir(parents=True, exist_ok=True)
    atomic_write_json(dst / "run.json", meta)
    return dst


def _noisy(y_true: np.ndarray, error_rate: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    wrong = rng.random(y_true.size) < error_rate
    return np.where(wrong, (y_true + 1) % 3, y_true)


def _cli_json(capsys, argv: list[str]) -> dict:
    rc = cli_main(argv)
    out = capsys.readouterr().out
    assert rc == 0
    return json.loads(out)  # exactly one JSON document (json.loads rejects trailing data)


# --------------------------------------------------------------------------------------------
# compare
# --------------------------------------------------------------------------------------------


def test_compare_json_structure_on_real_runs(real_runs, capsys):
    d = real_runs.dirs
    paths = [str(d[("baseline", 0)]), str(d[("csba", 0)]), str(d[("baseline", 1)])]
    doc = _cli_json(capsys, ["compare", *paths, "--json", "--resamples", "300"])

    assert [r["path"] for r in doc["runs"]] == paths
    assert [r["variant"] for r in doc["runs"]] == ["baseline", "csba", "baseline"]
    assert [r["seed"] for r in doc["runs"]] == [0, 0, 1]
    assert len({r["name"] for r in doc["runs"]}) == 3
    for run in doc["runs"]:
        meta = read_run_json(run["path"])
        for m in ("accuracy", "macro_f1", "balanced_accuracy"):
            lo, hi = run[f"{m}_ci"]
            assert lo <= run[m] <= hi
        # Point values are those the training code stored for the same predictions.
        assert run["accuracy"] == pytest.approx(meta["metrics"]["test"]["accuracy"])
        assert run["macro_f1"] == pytest.approx(meta["metrics"]["test"]["macro_f1"])
        assert set(run["per_class"]) == set(CLASSES)
        for cname, pc in run["per_class"].items():
            for metric in ("f1", "precision", "recall"):
                lo, hi = pc[f"{metric}_ci"]
                assert lo <= pc[metric] <= hi, (run["name"], cname, metric)
            stored = meta["metrics"]["test"]["per_class"][cname]
            assert pc["f1"] == pytest.approx(stored["f1"])
            assert pc["support"] == stored["support"]
        assert np.asarray(run["confusion_matrix"]).sum() == run["n"]

    ref = doc["reference"]
    assert ref == doc["runs"][0]["name"]
    assert all(e["run"] != ref and e["reference"] == ref for e in doc["deltas"])
    # Two compared runs x (3 classes x P/R/F1 + 3 overall metrics).
    assert len(doc["deltas"]) == 2 * (3 * 3 + 3)
    for e in doc["deltas"]:
        assert e["ci"][0] <= e["delta"] <= e["ci"][1]
    # The F1 delta is the difference of the per-run F1 values.
    by_name = {r["name"]: r for r in doc["runs"]}
    for e in doc["deltas"]:
        if e["metric"] == "f1":
            want = by_name[e["run"]]["per_class"][e["class"]]["f1"]
            want -= by_name[ref]["per_class"][e["class"]]["f1"]
            assert e["delta"] == pytest.approx(want)


def test_run_compared_with_itself_has_zero_deltas(real_runs, tmp_path):
    src = real_runs.dirs[("baseline", 0)]
    y_true = np.repeat(np.arange(3), [60, 40, 20])
    run = _derive(src, tmp_path / "noisy-s0", y_true=y_true, y_pred=_noisy(y_true, 0.3, 1))
    cmp = compare_runs([run, run], n_resamples=300)
    names = [r["name"] for r in cmp["json"]["runs"]]
    assert len(set(names)) == 2  # the same folder twice still gets two names
    # The run's own intervals are not degenerate, so a zero-width delta interval means pairing.
    f1_ci = cmp["json"]["runs"][0]["per_class"]["beta"]["f1_ci"]
    assert f1_ci[1] - f1_ci[0] > 0.05
    deltas = cmp["json"]["deltas"]
    assert deltas and all(e["delta"] == 0 and e["ci"] == [0.0, 0.0] for e in deltas)
    assert not cmp["tables"]["deltas"]["significant"].any()


def test_clearly_better_run_has_significant_positive_delta(real_runs, tmp_path):
    src = real_runs.dirs[("baseline", 0)]
    y_true = np.repeat(np.arange(3), [60, 40, 20])
    bad = _derive(src, tmp_path / "bad", y_true=y_true, y_pred=_noisy(y_true, 0.6, 1))
    good = _derive(src, tmp_path / "good", y_true=y_true, y_pred=_noisy(y_true, 0.05, 2))
    d = compare_runs([bad, good], n_resamples=500)["tables"]["deltas"]
    row = d[(d["class"] == "(overall)") & (d["metric"] == "macro_f1")].iloc[0]
    assert row["delta"] > 0 and row["ci_low"] > 0 and row["significant"]


def test_mismatched_test_sets_raise(real_runs, tmp_path, capsys):
    src = real_runs.dirs[("baseline", 0)]
    meta = read_run_json(src)
    y_true = np.array(meta["predictions"]["test"]["y_true"])
    other = y_true.copy()
    other[0] = (other[0] + 1) % 3
    changed = _derive(src, tmp_path / "changed", y_true=other, y_pred=other)
    with pytest.raises(ValueError, match="different test sets") as exc:
        compare_runs([src, changed], n_resamples=50)
    assert str(src) in str(exc.value) and str(changed) in str(exc.value)
    assert "\n" not in str(exc.value)

    shorter = _derive(src, tmp_path / "shorter", y_true=y_true[:-1], y_pred=y_true[:-1])
    with pytest.raises(ValueError, match="different test sets"):
        compare_runs([src, shorter], n_resamples=50)

    renamed = tmp_path / "renamed"
    _derive(src, renamed)
    m = read_run_json(renamed)
    m["classes"] = ["a", "b", "c"]
    atomic_write_json(renamed / "run.json", m)
    with pytest.raises(ValueError, match="different classes"):
        compare_runs([src, renamed], n_resamples=50)

    # The command line turns it into one line on stderr and exit status 2.
    rc = cli_main(["compare", str(src), str(changed)])
    err = capsys.readouterr().err
    assert rc == 2 and "different test sets" in err and err.count("\n") == 1


def test_unusable_runs_raise_run_error(real_runs, tmp_path):
    src = real_runs.dirs[("baseline", 0)]
    with pytest.raises(RunError, match="no such run folder"):
        compare_runs([src, tmp_path / "missing"])
    nopred = _derive(src, tmp_path / "nopred", drop=("predictions",))
    with pytest.raises(RunError, match="no test predictions"):
        compare_runs([nopred])
    with pytest.raises(ValueError, match="at least one"):
        compare_runs([])
    with pytest.raises(ValueError, match="resamples"):
        compare_runs([src], n_resamples=0)


def test_csv_and_latex_files(real_runs, tmp_path, capsys):
    d = real_runs.dirs
    argv = ["compare", str(d[("baseline", 0)]), str(d[("baseline", 1)]), str(d[("csba", 0)])]
    argv += ["--csv", str(tmp_path / "csv"), "--latex", str(tmp_path / "tex")]
    assert cli_main([*argv, "--resamples", "200", "--seed", "0"]) == 0
    captured = capsys.readouterr()
    assert "wrote " in captured.out and not captured.out.lstrip().startswith("{")
    expected = {
        "summary": {"run", "variant", "seed", "accuracy", "accuracy_ci_low", "macro_f1",
                    "macro_f1_ci_high", "balanced_accuracy", "parameters", "best_epoch"},
        "per_class": {"run", "class", "metric", "value", "ci_low", "ci_high", "support"},
        "per_class_f1": {"class", "support", "train"},
        "deltas": {"run", "reference", "class", "metric", "delta", "ci_low", "ci_high",
                   "significant"},
        "seeds": {"variant", "class", "metric", "mean", "std", "min", "max", "n"},
        "conflict": {"run", "variant", "seed", "rank", "class_a", "class_b", "cos"},
    }  # fmt: skip
    for name, cols in expected.items():
        df = pd.read_csv(tmp_path / "csv" / f"{name}.csv")
        assert cols <= set(df.columns), name
        tex = (tmp_path / "tex" / f"{name}.tex").read_text().strip()
        assert tex.startswith(r"\begin{tabular}") and tex.endswith(r"\end{tabular}"), name
        assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
        # One header line plus one line per row, each ending in \\.
        assert tex.count(r" \\") == len(df) + 1, name
    per_class = pd.read_csv(tmp_path / "csv" / "per_class.csv")
    assert len(per_class) == 3 * 3 * 3  # runs x classes x metrics
    summary = pd.read_csv(tmp_path / "csv" / "summary.csv")
    assert list(summary["variant"]) == ["baseline", "baseline", "csba"]


def test_terminal_tables(real_runs, capsys):
    d = real_runs.dirs
    rc = cli_main(["compare", str(d[("baseline", 0)]), str(d[("csba", 0)]), "--resamples", "100"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "Per-class F1" in out and "Deltas against" in out
    assert re.search(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", out)
    for cname in CLASSES:
        assert cname in out


def test_figures_png_and_self_contained_html(real_runs, tmp_path):
    d = real_runs.dirs
    cmp = compare_runs([d[("baseline", 0)], d[("csba", 0)]], n_resamples=100)
    files = report.write_figures(cmp, tmp_path / "fig")
    names = {p.name for p in files}
    assert names == {
        "per_class_f1.png",
        "per_class_f1.html",
        "confusion_matrices.png",
        "confusion_matrices.html",
    }
    for p in files:
        assert p.stat().st_size > 1000
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        else:
            html = p.read_text()
            assert "plotly.js v" in html  # the library is inline ...
            remote = re.search(r"<script[^>]*\bsrc\s*=\s*[\"']?(https?:)?//", html)
            assert remote is None  # ... and nothing is fetched


def test_seed_aggregation_two_seeds(real_runs):
    d = real_runs.dirs
    cmp = compare_runs([d[("baseline", 0)], d[("baseline", 1)], d[("csba", 0)]], n_resamples=100)
    seeds = cmp["tables"]["seeds"]
    assert set(seeds["variant"]) == {"baseline"}  # csba has a single seed: nothing to aggregate
    assert (seeds["n"] == 2).all()
    summary = cmp["tables"]["summary"].set_index("run")
    names = [r["name"] for r in cmp["json"]["runs"][:2]]
    for metric in ("accuracy", "macro_f1"):
        row = seeds[(seeds["class"] == "(overall)") & (seeds["metric"] == metric)].iloc[0]
        values = summary.loc[names, metric].to_numpy()
        assert row["mean"] == pytest.approx(values.mean())
        assert row["std"] == pytest.approx(np.std(values, ddof=1))
        assert row["min"] == pytest.approx(values.min())
        assert row["max"] == pytest.approx(values.max())
    f1_rows = seeds[seeds["metric"] == "f1"]
    assert sorted(f1_rows["class"]) == sorted(CLASSES)
    js = cmp["json"]["seed_aggregates"]
    assert len(js) == len(seeds) and all(e["runs"] == names for e in js)


def _gcm(matrix: list[list[float | None]], layout: str) -> dict:
    """A diagnostics dict with the gcm in one of the layouts the report must accept."""
    gcm: dict = {"classes": CLASSES, "matrix": matrix}
    if layout == "dicts":
        gcm.update(mean=-0.2, std=0.1)
        gcm["most_adversarial"] = [
            {"i": 0, "j": 2, "classes": ["alpha", "gamma"], "cos": -0.5},
            {"i": 0, "j": 1, "classes": ["alpha", "beta"], "cos": -0.1},
        ]
    elif layout == "triples":
        gcm["most_adversarial"] = [[1, 2, -0.3], [0, 1, 0.2]]
    return {"gcm": gcm}


def test_conflict_table_tolerates_diagnostics_layouts(real_runs, tmp_path):
    src = real_runs.dirs[("baseline", 0)]
    m = [[1.0, -0.1, -0.5], [-0.1, 1.0, 0.05], [-0.5, 0.05, 1.0]]
    a = _derive(src, tmp_path / "a", diagnostics=_gcm(m, "dicts"))
    m_nan = [[1, 0.2, None], [0.2, 1, -0.3], [None, -0.3, 1]]  # None: NaN as stored in JSON
    b = _derive(src, tmp_path / "b", diagnostics=_gcm(m_nan, "triples"))
    c = _derive(src, tmp_path / "c", diagnostics=_gcm(m, "matrix-only"))
    plain = _derive(src, tmp_path / "plain")
    cmp = compare_runs([plain, a, b, c], n_resamples=50)
    conflict = cmp["tables"]["conflict"]
    assert "plain" not in set(conflict["run"])
    rows = conflict[conflict["run"] == "a"]
    assert list(zip(rows["class_a"], rows["class_b"], strict=True)) == [
        ("alpha", "gamma"),
        ("alpha", "beta"),
    ]
    rows = conflict[conflict["run"] == "b"]
    assert rows["class_a"].iloc[0] == "beta" and rows["cos"].iloc[0] == pytest.approx(-0.3)
    rows = conflict[conflict["run"] == "c"]  # derived from the matrix, most negative first
    assert list(rows["cos"]) == pytest.approx([-0.5, -0.1, 0.05])
    assert list(rows["rank"]) == [1, 2, 3]
    summary = cmp["tables"]["summary"].set_index("run")
    assert summary.loc["a", "gcm_mean"] == pytest.approx(-0.2)  # stored value wins
    assert summary.loc["c", "gcm_mean"] == pytest.approx((-0.1 - 0.5 + 0.05) / 3)
    assert np.isnan(summary.loc["plain", "gcm_mean"])
    js = {r["name"]: r for r in cmp["json"]["runs"]}
    assert js["plain"]["gcm_mean"] is None
    assert cmp["json"]["conflict"][0]["classes"] == ["alpha", "gamma"]


# --------------------------------------------------------------------------------------------
# README results section
# --------------------------------------------------------------------------------------------


def test_replace_between_markers():
    text = f"# T\n\nbefore\n{RESULTS_START}\nold\n{RESULTS_END}\nafter\n"
    new = replace_between_markers(text, "NEW")
    assert new == f"# T\n\nbefore\n{RESULTS_START}\nNEW\n{RESULTS_END}\nafter\n"
    assert replace_between_markers(new, "NEW") == new
    appended = replace_between_markers("# T\n", "X")
    assert appended == f"# T\n\n{RESULTS_START}\nX\n{RESULTS_END}\n"
    with pytest.raises(ValueError, match="exactly one"):
        replace_between_markers(f"{RESULTS_START}\n", "X")
    with pytest.raises(ValueError, match="before"):
        replace_between_markers(f"{RESULTS_END}\n{RESULTS_START}\n", "X")


def test_readme_writer_replaces_only_between_markers_and_is_idempotent(real_runs, tmp_path):
    readme = tmp_path / "README.md"
    before = "# CSBA Explorer\n\nIntro | with a pipe.\n\n## Results\n\n"
    after = "\n\n## Licence\n\nApache-2.0\n"
    readme.write_text(f"{before}{RESULTS_START}\nstale text\n{RESULTS_END}{after}")
    info = write_readme_results(real_runs.root, readme, dataset="imagefolder", n_resamples=200)
    text = readme.read_text()
    assert info["changed"]
    assert text.startswith(before + RESULTS_START + "\n") and text.endswith(RESULTS_END + after)
    assert "stale text" not in text
    body = text[text.index(RESULTS_START) : text.index(RESULTS_END)]
    assert "python -m csba report" in body  # how to regenerate it
    assert "F1 of gamma" in body  # the minority class (fewest training images)
    params = read_run_json(real_runs.dirs[("csba", 0)])["parameters"]
    assert f"{params:,}" in body  # paper Table 2: parameter counts
    assert "| baseline |" in body and "| csba |" in body
    assert info["variants"] == {"baseline": 2, "csba": 1}

    again = write_readme_results(real_runs.root, readme, dataset="imagefolder", n_resamples=200)
    assert not again["changed"] and readme.read_text() == text

    # Without markers the section is appended and the rest kept.
    plain = tmp_path / "PLAIN.md"
    plain.write_text("# Title\n\nSome text.\n")
    write_readme_results(real_runs.root, plain, dataset="imagefolder", n_resamples=50)
    t = plain.read_text()
    assert t.startswith("# Title\n\nSome text.\n\n" + RESULTS_START)
    assert t.rstrip().endswith(RESULTS_END)


def _verdict_root(real_runs, tmp_path: Path, csba_error: float) -> Path:
    """Two seeds each of baseline (30% errors) and csba on a 300-image test set."""
    src = real_runs.dirs[("baseline", 0)]
    root = tmp_path / "root"
    y_true = np.repeat(np.arange(3), [150, 100, 50])
    for seed in (0, 1):
        _derive(
            src,
            root / "imagefolder-32px" / f"baseline-s{seed}",
            variant="baseline",
            seed=seed,
            y_true=y_true,
            y_pred=_noisy(y_true, 0.3, 10 + seed),
        )
        _derive(
            src,
            root / "imagefolder-32px" / f"csba-s{seed}",
            variant="csba",
            seed=seed,
            y_true=y_true,
            y_pred=_noisy(y_true, csba_error, 20 + seed),
        )
    return root


@pytest.mark.parametrize(
    ("csba_error", "better", "phrase"),
    [(0.05, True, "CSBA beats the baseline"), (0.6, False, "CSBA does not beat the baseline")],
)
def test_readme_verdict_decided(real_runs, tmp_path, csba_error, better, phrase):
    root = _verdict_root(real_runs, tmp_path, csba_error=csba_error)
    info = write_readme_results(root, tmp_path / "R.md", dataset="imagefolder", n_resamples=300)
    v = info["verdict"]
    assert v["decided"] and v["csba_better"] is better and v["seed_spread_measured"]
    assert (v["ci"][0] > 0) if better else (v["ci"][1] < 0)
    assert phrase in v["sentence"]
    assert v["sentence"] in (tmp_path / "R.md").read_text()


def test_readme_per_run_bar_statuses_and_counts(real_runs, tmp_path, capsys):
    # csba errs on 5% of 300 test images (accuracy about 0.95), the baseline on 30% (about
    # 0.70, 95% interval about +-0.05): against a bar of accuracy 0.8 the csba runs clearly meet
    # it and the baseline runs clearly miss it; at 0.71 the baseline runs are within noise.
    root = _verdict_root(real_runs, tmp_path, csba_error=0.05)
    readme = tmp_path / "R.md"
    info = write_readme_results(
        root, readme, dataset="imagefolder", n_resamples=300, bar=(0.8, 0.5)
    )
    bar = info["bar"]
    assert (bar["accuracy"], bar["macro_f1"], bar["runs"], bar["meet"]) == (0.8, 0.5, 4, 2)
    assert bar["counts"] == {
        "clearly meets": 2,
        "meets": 0,
        "misses within noise": 0,
        "clearly misses": 2,
    }
    assert bar["expected"] == pytest.approx(2.0) and bar["all_share"] == 0.0
    by_run = {(r["variant"], r["seed"]): r for r in bar["per_run"]}
    assert by_run[("csba", 1)]["status"] == "clearly meets"
    assert by_run[("baseline", 0)]["status"] == "clearly misses"
    lo, hi = by_run[("baseline", 0)]["accuracy"]["ci"]
    assert lo < by_run[("baseline", 0)]["accuracy"]["value"] < hi < 0.8
    summary = readme.read_text()
    assert "--bar-accuracy 0.8 --bar-macro-f1 0.5" in summary  # the command that wrote it
    assert "**Shipping bar: not met.** 2 of 4 runs clearly miss accuracy 0.80" in summary
    text = (tmp_path / "docs" / "results.md").read_text()  # every table, the bar's detail
    assert "--bar-accuracy 0.8 --bar-macro-f1 0.5" in text
    assert "| status: accuracy >= 0.80 and macro-F1 >= 0.50 |" in text
    assert "clearly misses (0%)" in text and "clearly meets (100%)" in text
    assert "2 of 4 runs reach both thresholds" in text
    # Each run's accuracy cell carries its own interval.
    acc = by_run[("baseline", 0)]["accuracy"]
    assert f"{acc['value']:.3f} [{acc['ci'][0]:.3f}, {acc['ci'][1]:.3f}]" in text

    near = write_readme_results(
        root, tmp_path / "N.md", dataset="imagefolder", n_resamples=300, bar=(0.71, 0.5)
    )["bar"]
    statuses = {(r["variant"], r["status"]) for r in near["per_run"]}
    assert ("baseline", "misses within noise") in statuses or ("baseline", "meets") in statuses
    assert near["counts"]["clearly misses"] == 0

    # Without a bar: intervals, no bar column, no bar in the info.
    plain = write_readme_results(root, tmp_path / "P.md", dataset="imagefolder", n_resamples=300)
    plain_text = (tmp_path / "docs" / "results.md").read_text()
    assert plain["bar"] is None and "| status:" not in plain_text

    # The command line: both flags or neither, thresholds in [0, 1], one line on stderr.
    for extra, message in (
        (["--bar-accuracy", "0.6"], "give both --bar-accuracy and --bar-macro-f1"),
        (["--bar-accuracy", "60", "--bar-macro-f1", "0.45"], "--bar-accuracy must be in"),
    ):
        rc = cli_main(
            ["report", str(root), "--readme", str(readme), "--dataset", "imagefolder", *extra]
        )
        err = capsys.readouterr().err
        assert rc == 2 and message in err and err.count("\n") == 1
    bar_flags = ["--bar-accuracy", "0.8", "--bar-macro-f1", "0.5"]
    rc = cli_main(
        ["report", str(root), "--readme", str(readme), "--dataset", "imagefolder", *bar_flags]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "Shipping bar: not met. 2 of 4 runs clearly miss accuracy 0.80" in out


def test_bootstrap_seed_mean_helper():
    y = np.repeat(np.arange(3), [50, 30, 20])
    preds = [_noisy(y, 0.3, s) for s in range(3)]
    one = stats.bootstrap_seed_mean(y, preds[:1], 3, n_resamples=200, seed=4)
    ref = stats.bootstrap_metrics(y, preds[0], 3, n_resamples=200, seed=4)
    assert one["macro_f1"] == ref["macro_f1"] and one["per_class"] == ref["per_class"]
    mean = stats.bootstrap_seed_mean(y, preds, 3, n_resamples=200)
    singles = [stats.bootstrap_metrics(y, p, 3, n_resamples=50)["macro_f1"]["value"] for p in preds]
    assert mean["macro_f1"]["value"] == pytest.approx(np.mean(singles))
    lo, hi = mean["macro_f1"]["ci"]
    assert lo <= mean["macro_f1"]["value"] <= hi
    same = stats.bootstrap_seed_mean(y, preds, 3, n_resamples=200, reference=preds)
    assert same["macro_f1"] == {"value": 0.0, "ci": [0.0, 0.0]}
    with pytest.raises(ValueError):
        stats.bootstrap_seed_mean(y, [], 3)


def test_readme_verdict_not_resolved(real_runs, tmp_path):
    root = _verdict_root(real_runs, tmp_path, csba_error=0.3)
    info = write_readme_results(root, tmp_path / "R.md", dataset="imagefolder", n_resamples=300)
    v = info["verdict"]
    assert not v["decided"]
    assert v["ci"][0] < 0 < v["ci"][1] or v["reason"] == "within seed spread"
    assert "not resolved" in v["sentence"]


def test_readme_errors_and_report_cli(real_runs, tmp_path, capsys):
    with pytest.raises(ValueError, match="no usable runs of dataset 'elpv'"):
        write_readme_results(real_runs.root, tmp_path / "R.md", dataset="elpv")
    with pytest.raises(ValueError, match="not a folder"):
        write_readme_results(tmp_path / "nowhere", tmp_path / "R.md", dataset="imagefolder")
    assert not (tmp_path / "R.md").exists()

    argv = ["report", str(real_runs.root), "--readme", str(tmp_path / "R.md")]
    argv += ["--dataset", "imagefolder", "--resamples", "50"]
    capsys.readouterr()
    assert cli_main([*argv, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)  # stdout is one JSON document
    assert got["readme"] == str(tmp_path / "R.md")
    assert got["results"] == str(tmp_path / "docs" / "results.md")
    assert (tmp_path / "docs" / "results.md").is_file()
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "already up to date" in out


def test_readme_ignores_other_datasets_and_broken_runs(real_runs, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(real_runs.root, root)
    broken = root / "imagefolder-32px" / "broken-s0"
    broken.mkdir()
    (broken / "run.json").write_text("{not json")
    info = write_readme_results(root, tmp_path / "R.md", dataset="imagefolder", n_resamples=50)
    assert len(info["runs"]) == 3
    assert any("broken-s0" in n for n in info["notes"])


def test_readme_branch_shares_and_tradeoff_tables_known_answer(real_runs, tmp_path):
    """Tables 5 and 6: seed means of hand-written shares, gaps and conflict changes."""
    src = real_runs.dirs[("baseline", 0)]
    root = tmp_path / "root" / "imagefolder-32px"

    def diag(mean_cos: float, shares) -> dict:
        m = np.full((3, 3), mean_cos)
        np.fill_diagonal(m, 1.0)
        return {"gcm": {"matrix": m.tolist()}, "branches": {"shares": shares}}

    uniform = [[1 / 3] * 3] * 3
    skew = [[0.5, 0.25, 0.25], [1 / 3] * 3, [0.2, 0.2, 0.6]]
    runs = [
        ("baseline", 0, diag(-0.30, uniform), 0.10),
        ("baseline", 1, diag(-0.20, uniform), 0.20),
        ("csba", 0, diag(-0.10, skew), 0.30),
        ("csba", 1, diag(0.00, skew), 0.50),
    ]
    for variant, seed, d, gap in runs:
        dst = _derive(src, root / f"{variant}-s{seed}", variant=variant, seed=seed, diagnostics=d)
        meta = read_run_json(dst)
        meta["generalisation_gap"] = gap
        atomic_write_json(dst / "run.json", meta)
    md, _ = render_results_markdown(tmp_path / "root", "imagefolder", n_resamples=50)
    t5 = md[md.index("paper Table 5") : md.index("paper Table 6")]
    rows5 = {r.split("|")[1].strip(): r for r in t5.splitlines() if r.startswith("| ")}
    assert (
        "| 0.50 / 0.25 / 0.25 | 0.33 / 0.33 / 0.33 | 0.20 / 0.20 / 0.60 | 0.267 |" in rows5["csba"]
    )
    assert rows5["baseline"].endswith("| 0.000 |")
    t6 = md[md.index("paper Table 6") : md.index("#### Every method against the baseline")]
    rows6 = {r.split("|")[1].strip(): r.split("|") for r in t6.splitlines() if r.startswith("| ")}
    assert rows6["baseline"][4].strip() == "0.150 ± 0.071"  # mean ± sample std of 0.1, 0.2
    assert rows6["baseline"][5].strip() == "-"
    # csba conflict means -0.1 and 0.0 against the baseline's seed mean -0.25
    assert rows6["csba"][5].strip() == "0.200 ± 0.071"
    assert rows6["csba"][4].strip() == "0.400 ± 0.141"


def test_readme_names_the_test_time_views_and_warns_when_mixed(real_runs, tmp_path):
    src = real_runs.dirs[("baseline", 0)]
    root = tmp_path / "root" / "imagefolder-32px"
    for variant, views in (("baseline", 4), ("csba", 4)):
        dst = _derive(src, root / f"{variant}-s0", variant=variant, seed=0)
        meta = read_run_json(dst)
        meta["evaluation"] = {"views": views}
        atomic_write_json(dst / "run.json", meta)
    md, _ = render_results_markdown(tmp_path / "root", "imagefolder", n_resamples=50)
    assert "softmax over 4 test-time views (flips" in md and "Warning" not in md
    meta = read_run_json(root / "csba-s0")
    meta["evaluation"] = {"views": 8}
    atomic_write_json(root / "csba-s0" / "run.json", meta)
    md, _ = render_results_markdown(tmp_path / "root", "imagefolder", n_resamples=50)
    assert "different numbers of test-time views (4, 8)" in md
    plain, _ = render_results_markdown(real_runs.root, "imagefolder", n_resamples=50)
    assert "test-time views" not in plain


def test_readme_gives_the_single_view_verdict_too(real_runs, tmp_path):
    """Runs evaluated with test-time views keep single-view predictions; the section gives the
    verdict for both, each from its own predictions."""
    src = real_runs.dirs[("baseline", 0)]
    root = tmp_path / "root" / "imagefolder-32px"
    y_true = np.asarray(read_run_json(src)["predictions"]["test"]["y_true"])
    good, bad = y_true, (y_true + 1) % 3  # csba right with views, wrong without
    for variant, seed in (("baseline", 0), ("baseline", 1), ("csba", 0), ("csba", 1)):
        noisy = _noisy(y_true, 0.3, seed + (10 if variant == "baseline" else 20))
        views_pred = good if variant == "csba" else noisy
        single_pred = bad if variant == "csba" else noisy
        dst = _derive(src, root / f"{variant}-s{seed}", variant=variant, seed=seed)
        meta = read_run_json(dst)
        meta["predictions"]["test"]["y_pred"] = [int(v) for v in views_pred]
        meta["predictions"]["test"].pop("probs", None)
        meta["predictions_single_view"] = {
            "test": {"y_true": y_true.tolist(), "y_pred": [int(v) for v in single_pred]}
        }
        meta["evaluation"] = {"views": 4}
        atomic_write_json(dst / "run.json", meta)
    md, info = render_results_markdown(tmp_path / "root", "imagefolder", n_resamples=100)
    assert info["verdict"]["csba_better"] is True
    assert info["verdict_single_view"]["csba_better"] is False
    assert "**Without test-time views** (single forward pass): On imagefolder CSBA does not" in md
    # without single-view predictions there is no second verdict
    plain, info = render_results_markdown(real_runs.root, "imagefolder", n_resamples=50)
    assert info["verdict_single_view"] is None and "Without test-time views" not in plain


def test_readme_per_run_table_known_answer(real_runs, tmp_path):
    """One row per run plus the majority-class predictor's row, with hand-checkable numbers."""
    root = _verdict_root(real_runs, tmp_path, csba_error=0.6)
    md, _ = render_results_markdown(root, "imagefolder", n_resamples=50)
    section = md[md.index("#### Per run") : md.index("paper Table 5")]
    rows = [r.split("|")[1:-1] for r in section.splitlines() if r.startswith("| ")]
    rows = [[c.strip() for c in r] for r in rows[1:]]  # past the header
    # 300 test labels 150/100/50: always predicting class 0 gets accuracy 0.5, F1s 2/3, 0, 0.
    trivial = rows[0]
    assert trivial[0].startswith("majority-class predictor (always ")
    assert trivial[4:7] == ["0.500", f"{2 / 9:.3f}", "0.000"]
    y_true = np.repeat(np.arange(3), [150, 100, 50])
    by_run = {(r[0], r[1]): r for r in rows[1:]}
    assert set(by_run) == {("baseline", "0"), ("baseline", "1"), ("csba", "0"), ("csba", "1")}
    for (variant, seed), row in by_run.items():
        offset = 10 if variant == "baseline" else 20
        y_pred = _noisy(y_true, 0.3 if variant == "baseline" else 0.6, offset + int(seed))
        # each run's own interval: that of stats.bootstrap_metrics with the report's settings
        ci = stats.bootstrap_metrics(y_true, y_pred, 3, n_resamples=50, seed=0)["accuracy"]["ci"]
        assert row[4] == f"{np.mean(y_pred == y_true):.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
    # 30% errors beat the 0.5 of the trivial predictor; 60% errors do not.
    assert "2 of 4 runs beat the majority-class predictor's accuracy" in section


def test_readme_names_the_training_protocol_and_warns_when_mixed(real_runs, tmp_path):
    from csba.report import protocol_changes

    pinned = {"epochs": 300, "lr": 1e-4, "seed": 4, "variant": "csba", "out": "x"}
    assert protocol_changes({"config": pinned}) == {}  # run names and paths are not protocol
    changed = {**pinned, "lr": 3e-4, "lr_schedule": "cosine", "keep": "last", "epochs": 40}
    assert protocol_changes({"config": changed}) == {
        "epochs": 40,
        "lr": 3e-4,
        "lr_schedule": "cosine",
        "keep": "last",
    }
    src = real_runs.dirs[("baseline", 0)]
    root = tmp_path / "root" / "imagefolder-32px"
    for variant in ("baseline", "csba"):
        dst = _derive(src, root / f"{variant}-s0", variant=variant, seed=0)
        meta = read_run_json(dst)
        meta["config"] = {**meta["config"], **pinned}
        atomic_write_json(dst / "run.json", meta)
    md, _ = render_results_markdown(tmp_path / "root", "imagefolder", n_resamples=50)
    assert "Every run used the pinned training protocol (`docs/design.md` §2)." in md
    meta = read_run_json(root / "csba-s0")
    meta["config"] = changed
    atomic_write_json(root / "csba-s0" / "run.json", meta)
    md, _ = render_results_markdown(tmp_path / "root", "imagefolder", n_resamples=50)
    assert "trained with different protocols (`epochs` 40, `lr` 0.0003" in md
    meta = read_run_json(root / "baseline-s0")
    meta["config"] = changed
    atomic_write_json(root / "baseline-s0" / "run.json", meta)
    md, _ = render_results_markdown(tmp_path / "root", "imagefolder", n_resamples=50)
    assert (
        "(`docs/design.md` §2) except `epochs` 40, `lr` 0.0003, `lr_schedule` cosine, `keep` last."
        in md
    )
