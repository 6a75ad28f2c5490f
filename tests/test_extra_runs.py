"""The long-tail methods and torchvision backbones through every page and every command.

Runs against a private copy of ``tiny_extra_runs`` (one epoch each, 32 px, diagnosed: the five
long-tail methods and baseline on trifire, baseline and csba on resnet18, csba on timm's
mobilenetv3_small_050), with the weights of
pcgrad and csba-resnet18 removed: run records as ``checkpoints/`` ships the experiment runs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import settle_attributions
from streamlit.testing.v1 import AppTest

from csba.models import PAPER_VARIANTS, list_models
from csba.report import render_results_markdown

NUMBERS = "Probabilities, branch logits and attention"  # the Attributions chart

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "app.py")
RECORDS = ("pcgrad-s0", "csba-resnet18-s0")  # shipped as records: run.json, no weights
NEW = [v for v in list_models() if v not in PAPER_VARIANTS]

pytestmark = pytest.mark.slow  # eight trained, diagnosed runs through every page and command


@pytest.fixture(scope="module")
def extra_root(tiny_extra_runs, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("extra_pages") / "runs"
    shutil.copytree(next(iter(tiny_extra_runs.values())).parent.parent, root)
    for name in RECORDS:
        (next(root.rglob(name)) / "model.safetensors").unlink()
    return root


@pytest.fixture
def pages_env(extra_root, tiny_folder, monkeypatch):
    monkeypatch.setenv("CSBA_RUNS_ROOT", str(extra_root))
    monkeypatch.setenv("CSBA_DATA_ROOT", str(tiny_folder.parent))
    monkeypatch.chdir(REPO)
    monkeypatch.syspath_prepend(str(REPO))
    return extra_root


def _all_runs(root: Path) -> list[str]:
    return sorted(str(p.parent) for p in root.rglob("run.json"))


def _select_all(at: AppTest, root: Path) -> list[str]:
    box = next(m for m in at.sidebar.multiselect if (m.key or "").endswith("_runs"))
    box.set_value(_all_runs(root))
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return list(box.options)


def _open(path: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    at.switch_page(path)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.mark.parametrize(
    "page",
    [
        "pages/confusion.py",
        "pages/f1.py",
        "pages/conflict.py",
        "pages/attention.py",
    ],
)
def test_run_pages_show_every_method_and_backbone(pages_env, page):
    at = _open(page)
    labels = _select_all(at, pages_env)
    for v in NEW:
        assert f"{v} s0 (32px)" in labels, labels
    assert {"baseline s0 (resnet18, 32px)", "csba s0 (resnet18, 32px)"} <= set(labels)
    assert not at.error, [e.value for e in at.error]
    assert at.get("plotly_chart")


def test_home_lists_methods_backbones_and_records(pages_env):
    at = _open("pages/home.py")
    runs = at.dataframe[0].value
    assert len(runs) == len(_all_runs(pages_env)) == 9
    timm_run = runs[runs["variant"] == "csba"].astype(str)
    assert timm_run.apply(lambda r: "timm:mobilenetv3_small_050" in " ".join(r), axis=1).any()
    assert set(NEW) | {"baseline", "csba"} == set(runs["variant"])
    assert not at.error, [e.value for e in at.error]


def test_conflict_page_draws_the_conflict_gain_scatter_per_backbone(pages_env):
    at = _open("pages/conflict.py")
    _select_all(at, pages_env)
    at.session_state["gcm_section"] = "Conflict vs minority gain"
    at.run()
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
    assert any(t.startswith("trifire: change against the baseline") for t in titles), titles
    assert any(t.startswith("resnet18: change against the baseline") for t in titles), titles
    text = "\n".join(m.value for m in at.markdown)
    assert "Spearman" in text or "rank correlation" in text, text


def test_conflict_change_is_against_the_baseline_of_the_same_backbone(pages_env):
    at = _open("pages/conflict.py")
    _select_all(at, pages_env)
    at.session_state["gcm_section"] = "Optimisation and generalisation"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    df = next(d.value for d in at.dataframe if "Δ vs baseline (same seed)" in d.value.columns)
    mean = dict(zip(df["run"], df["mean conflict (cos)"], strict=True))
    change = dict(zip(df["run"], df["Δ vs baseline (same seed)"], strict=True))
    got = float(change["csba s0 (resnet18, 32px)"])  # shown to 3 decimals, as in the docs
    assert got == pytest.approx(
        mean["csba s0 (resnet18, 32px)"] - mean["baseline s0 (resnet18, 32px)"], abs=5e-4
    )
    assert float(change["pcgrad s0 (32px)"]) == pytest.approx(
        mean["pcgrad s0 (32px)"] - mean["baseline s0 (32px)"], abs=5e-4
    )
    # a baseline against itself reads "-" (docs/results.md), never "+0.000"
    assert change["baseline s0 (32px)"] == "-" and change["baseline s0 (resnet18, 32px)"] == "-"


def test_attributions_page_offers_only_runs_with_weights(pages_env):
    at = _open("pages/attributions.py")
    box = at.sidebar.multiselect(key="attributions_runs")
    assert "pcgrad s0 (32px)" not in box.options
    assert "csba s0 (resnet18, 32px)" not in box.options
    assert "baseline s0 (resnet18, 32px)" in box.options and "crt s0 (32px)" in box.options
    assert any("2 run record(s) without weights not listed" in c.value for c in at.sidebar.caption)
    box.set_value([p for p in _all_runs(pages_env) if p.endswith(("-resnet18-s0", "/crt-s0"))])
    at.run()
    settle_attributions(at)  # the second run's Integrated Gradients come on a later rerun
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert [s.value for s in at.subheader] == ["Input", NUMBERS, "Each run"]
    # Each chosen run has its own column, explained (a failed run shows an error instead).
    heads = [m.value for m in at.markdown if m.value.startswith("#### ")]
    assert heads == ["#### baseline s0 (resnet18, 32px)", "#### crt s0 (32px)"], heads
    captions = [c for img in at.image for c in img.captions]
    assert sum("Integrated Gradients" in c for c in captions) == 2, captions
    assert any("as the model sees it: 32x32" in c for c in captions), captions


def test_training_page_trains_on_a_torchvision_backbone(
    pages_env, tiny_folder, tmp_path, monkeypatch
):
    import time

    import streamlit as st

    # Its own runs root and a fresh job registry: the registry is one per process, so jobs of
    # earlier tests (a failed one, say) would show here, and a run written into the shared root
    # would change what the other tests of this module count.
    st.cache_resource.clear()
    root = tmp_path / "runs"
    monkeypatch.setenv("CSBA_RUNS_ROOT", str(root))
    at = _open("pages/training.py")
    assert at.selectbox(key="train_backbone").options[0] == "trifire"
    at.selectbox(key="train_dataset").set_value("imagefolder")
    at.run()
    at.text_input(key="train_root_imagefolder").set_value(tiny_folder.name)
    at.multiselect(key="train_variants").set_value(["logit_adjust"])
    at.number_input(key="train_epochs").set_value(1)
    at.number_input(key="train_size").set_value(32)
    at.number_input(key="train_seed").set_value(5)
    at.selectbox(key="train_backbone").set_value("resnet18")
    at.run()
    at.button(key="train_start").click()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    run_dir = root / "imagefolder-32px" / "logit_adjust-resnet18-s5"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not (run_dir / "run.json").is_file():
        time.sleep(0.5)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
    try:
        meta = json.loads((run_dir / "run.json").read_text())
        assert meta["config"]["backbone"] == "resnet18" and meta["method"]["name"] == "logit_adjust"
    finally:
        for _ in range(60):  # let the job finish before the folder goes
            at.run()
            if any("logit_adjust" in s.value for s in at.success):
                break
            time.sleep(0.5)
        shutil.rmtree(run_dir, ignore_errors=True)


# ---- the commands ----------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "csba", *args], capture_output=True, text=True, cwd=REPO, timeout=600
    )


def test_compare_json_names_methods_and_conflict_gain(extra_root):
    runs = _all_runs(extra_root)
    base = next(p for p in runs if p.endswith("/baseline-s0"))
    res = _cli("compare", base, *[p for p in runs if p != base], "--json", "--resamples", "50")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert {r["backbone"] for r in out["runs"]} == {
        "trifire",
        "resnet18",
        "timm:mobilenetv3_small_050",
    }
    gain = out["conflict_gain"]
    assert set(gain["backbones"]) == {"trifire", "resnet18"}
    assert {m["method"] for m in gain["backbones"]["trifire"]["methods"]} == set(NEW)
    assert [m["method"] for m in gain["backbones"]["resnet18"]["methods"]] == ["csba-resnet18"]


def test_report_and_pair_group_by_method(extra_root, tmp_path):
    text, info = render_results_markdown(extra_root, "imagefolder", n_resamples=50, bar=(0.6, 0.45))
    for label in [*NEW, "baseline-resnet18", "csba-resnet18"]:
        assert f"| {label} " in text, label
    assert "#### Every method against the baseline" in text
    assert "| csba-resnet18 | baseline-resnet18 | 1 |" in text  # its own backbone's baseline
    assert "| baseline-resnet18 | baseline | 1 |" in text  # the backbones' family
    assert "#### Does reducing gradient conflict help the minority class?" in text
    # the shipping bar holds the paper's five on trifire only (here: baseline)
    assert info["bar"]["runs"] == 1 and set(info["bar"]["variants"]) == {"baseline"}
    assert "| experiment |" in text and "the other 8 (status: experiment)" in text
    assert "| csba-timm:mobilenetv3_small_050 " in text
    res = _cli(
        "pair", str(extra_root), str(extra_root), "--dataset", "imagefolder", "--json",
        "--resamples", "50",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    pairs = {r["variant"] for r in json.loads(res.stdout)["pairs"]}
    timm_csba = "csba-timm:mobilenetv3_small_050"
    assert {"baseline", "baseline-resnet18", "csba-resnet18", timm_csba, *NEW} >= pairs
    assert {"baseline", "baseline-resnet18", "csba-resnet18", *NEW} <= pairs


def test_diagnose_a_record_without_weights_is_one_clear_line(extra_root):
    res = _cli("diagnose", str(next(extra_root.rglob("pcgrad-s0"))))
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "model.safetensors" in lines[0], res.stderr
