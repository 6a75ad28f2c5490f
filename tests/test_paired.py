"""csba.paired / python -m csba pair: two protocols compared run by run (known answers)."""

import json
import math
import shutil
from pathlib import Path

import pytest

from csba.cli import main
from csba.paired import compare_protocols


def _set(run_dir: Path, **changes) -> None:
    meta = json.loads((run_dir / "run.json").read_text())
    for dotted, value in changes.items():
        node = meta
        *parents, last = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    (run_dir / "run.json").write_text(json.dumps(meta))


@pytest.fixture
def two_roots(tiny_runs, tmp_path):
    """A: all five tiny runs; B: three of them with known metrics, trained 'another way'."""
    a, b = tmp_path / "a", tmp_path / "b"
    for src in tiny_runs.values():
        shutil.copytree(src, a / "tiny" / src.name)
    known_a = {"baseline": 0.50, "csba": 0.60, "focal": 0.40}
    # B - A on validation macro-F1: +0.1, +0.2, +0.3 -> mean 0.2, SE 0.1 / sqrt(3)
    for i, (variant, f1) in enumerate(known_a.items()):
        run_a, run_b = a / "tiny" / f"{variant}-s0", b / "tiny" / f"{variant}-s0"
        shutil.copytree(tiny_runs[variant], run_b)
        _set(run_a, metrics__val__macro_f1=f1, metrics__val__accuracy=0.5)
        _set(run_a, metrics__test__accuracy=0.59, metrics__test__macro_f1=0.50)
        _set(run_b, metrics__val__macro_f1=f1 + 0.1 * (i + 1), metrics__val__accuracy=0.5)
        _set(run_b, metrics__test__accuracy=0.61, metrics__test__macro_f1=(0.44, 0.45, 0.46)[i])
        _set(run_b, config__lr_schedule="cosine", config__keep="last", config__epochs=40)
    return a, b


def test_paired_differences_intervals_and_bar_known_answer(two_roots):
    a, b = two_roots
    res = compare_protocols(a, b, dataset="imagefolder", bar=(0.60, 0.45), n_resamples=200)
    assert [(p["variant"], p["seed"]) for p in res["pairs"]] == [
        ("baseline", 0),
        ("csba", 0),
        ("focal", 0),
    ]
    f1 = res["summary"]["val_macro_f1"]
    assert f1["pairs"] == 3 and f1["b_better"] == 3
    assert f1["mean_diff"] == pytest.approx(0.2)
    assert f1["se"] == pytest.approx(0.1 / math.sqrt(3))
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t(0.975, 2 degrees of freedom)
    assert f1["ci"] == pytest.approx([0.2 - half, 0.2 + half])
    acc = res["summary"]["val_accuracy"]
    assert acc["mean_diff"] == 0 and acc["se"] == 0 and acc["b_better"] == 0
    # the predictions were not changed, so the test-set bootstrap sees no difference at all
    assert res["test_bootstrap"]["macro_f1"] == {"diff": 0.0, "ci": [0.0, 0.0]}
    # bar: A's edited runs miss accuracy 0.60; of B's only baseline misses macro-F1 0.45
    # (0.44; csba's 0.45 is on the bar, which counts as reaching it)
    assert res["a"]["bar"]["meet"] <= 2 and "csba-s0" in res["a"]["bar"]["failing"]
    bar_b = res["b"]["bar"]
    assert (bar_b["meet"], bar_b["runs"], bar_b["failing"]) == (2, 3, ["baseline-s0"])
    assert set(bar_b["within_noise"]) <= {"baseline-s0"}
    assert 0.0 <= bar_b["all_share"] <= 1.0 and 0.0 <= bar_b["expected"] <= 3.0
    assert res["unpaired"] == {"a": ["class_heads-s0", "gradnorm-s0"], "b": []}
    assert res["a"]["protocol"] == "32 px, epochs 1, batch_size 16"  # the tiny runs' settings
    assert res["b"]["protocol"] == "32 px, epochs 40, batch_size 16, lr_schedule cosine, keep last"
    # three pairs: the t interval (+-0.248) includes 0; A kept its best epoch: the bias is named
    assert res["verdict"].startswith("Validation does not resolve A against B")
    assert res["selection_bias"] and "biased toward A" in res["verdict"]

    for diffs, verdict in (
        ((0.10, 0.11, 0.12), "Validation supports B over A"),  # [+0.085, +0.135]
        ((-0.10, -0.11, -0.12), "Validation favours A (the reference) over B"),
    ):
        for (variant, f1), d in zip({"baseline": 0.5, "csba": 0.6, "focal": 0.4}.items(), diffs):
            _set(b / "tiny" / f"{variant}-s0", metrics__val__macro_f1=f1 + d)
        res = compare_protocols(a, b, dataset="imagefolder", n_resamples=10)
        assert res["verdict"].startswith(verdict), res["verdict"]


def test_pair_cli_prints_the_table_and_json(two_roots, capsys):
    a, b = two_roots
    argv = ["pair", str(a), str(b), "--dataset", "imagefolder", "--resamples", "100"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "val macro-F1" in out and "+0.200" in out
    assert "Shipping bar: not met. 3 of 3 runs clearly miss accuracy 0.60 or macro-F1 0.45" in out
    assert main([*argv, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["summary"]["val_macro_f1"]["mean_diff"] == pytest.approx(0.2)


def test_pair_cli_errors_are_one_line(two_roots, tmp_path, capsys):
    a, _ = two_roots
    assert main(["pair", str(a), str(tmp_path / "nowhere"), "--dataset", "imagefolder"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "is not a folder of runs" in err
    other = tmp_path / "other"
    src = a / "tiny" / "csba-s0"
    shutil.copytree(src, other / "tiny" / "csba-s1")
    _set(other / "tiny" / "csba-s1", config__seed=1)
    assert main(["pair", str(a), str(other), "--dataset", "imagefolder"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no variant and seed is under both" in err
