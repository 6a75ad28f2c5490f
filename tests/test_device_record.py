"""The record of the 224 px protocol run on a GPU (``benchmarks/results/elpv-224px-h200.tgz``).

The archive holds the run.json files and logs (no weights) of ``python -m csba protocol
--image-size 224 --seeds 0 1 2 --device cuda --jobs 8`` on one H200. docs/performance.md (GPU
section) quotes figures from it; these tests recompute them from the archive (and, for the
paired comparison, from the shipped 128 px runs), so the docs cannot drift from the record.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = REPO / "benchmarks" / "results" / "elpv-224px-h200.tgz"
# whitespace collapsed, so that rewrapping the README does not matter
README = " ".join((REPO / "docs" / "performance.md").read_text(encoding="utf-8").split())


@pytest.fixture(scope="module")
def record(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("h200")
    with tarfile.open(ARCHIVE) as tar:
        tar.extractall(root, filter="data")  # our own archive; "data" refuses links and ../
    return root


def _metas(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(root.glob("elpv-224px/*/run.json"))]


def test_record_is_the_whole_protocol_on_cuda_with_graphs(record):
    metas = _metas(record)
    assert sorted((m["variant"], m["config"]["seed"]) for m in metas) == sorted(
        (v, s) for v in ("baseline", "csba", "focal", "gradnorm", "class_heads") for s in (0, 1, 2)
    )
    assert all(m["runtime"]["device"] == "cuda" and m["runtime"]["cuda_graph"] for m in metas)
    assert all(m["config"]["image_size"] == 224 for m in metas)
    epochs = [len(m["history"]) for m in metas]
    train_s = [m["runtime"]["train_seconds"] for m in metas]
    # README: "27-89 epochs (691 in all) and 85-289 s of training each ... 2,158 s summed"
    assert (min(epochs), max(epochs), sum(epochs)) == (27, 89, 691)
    assert (round(min(train_s)), round(max(train_s)), round(sum(train_s))) == (85, 289, 2158)
    assert "27-89 epochs (691 in all) and 85-289 s" in README and "2,158 s summed" in README


def test_readme_pair_table_is_what_pair_computes(record):
    from csba.paired import compare_protocols

    res = compare_protocols(REPO / "checkpoints", record, image_size_b=224)
    for key, s in res["summary"].items():
        lo, hi = s["ci"]
        row = (
            f"| {s['label']} | {s['pairs']} | {s['mean_a']:.3f} | {s['mean_b']:.3f} | "
            f"{s['mean_diff']:+.3f} | [{lo:+.3f}, {hi:+.3f}] | {s['b_better']}/{s['pairs']} |"
        )
        assert row in README, (key, row)
    boot = res["test_bootstrap"]
    acc, f1 = boot["accuracy"], boot["macro_f1"]
    assert (
        f"accuracy {acc['diff']:+.3f} [{acc['ci'][0]:+.3f}, {acc['ci'][1]:+.3f}], macro-F1 "
        f"{f1['diff']:+.3f} [{f1['ci'][0]:+.3f}, {f1['ci'][1]:+.3f}]" in README
    )
    assert "does not resolve" in res["verdict"]
    assert res["b"]["bar"]["meet"] == 7 and res["a"]["bar"]["meet"] == 10
    assert len(res["b"]["bar"]["within_noise"]) == 5


def test_readme_claim_at_224px_is_what_report_computes(record):
    from csba.report import render_results_markdown

    body, info = render_results_markdown(record, bar=(0.6, 0.45))
    v = info["verdict"]
    assert "not resolved" in v["sentence"]
    assert "+0.006 [-0.012, +0.024]" in body.replace(", 95% paired bootstrap interval ", " ")
    assert "| gradnorm |" in body and "-0.026 [-0.048, -0.002]" in body
    assert "+0.020 [-0.004, +0.045]" in body and "0.664 ± 0.027" in body
    assert "csba - baseline macro-F1 +0.006, 95% paired bootstrap [-0.012, +0.024]" in README


@pytest.mark.slow
def test_protocols_page_opens_on_the_shipped_runs_against_the_record(monkeypatch):
    """The dashboard offers the bundled record as a folder of runs: with the shipped 128 px runs
    the Protocols page opens on 128 px (A) against the 224 px GPU protocol (B)."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.delenv("CSBA_RUNS_ROOT", raising=False)
    monkeypatch.chdir(REPO)
    monkeypatch.syspath_prepend(str(REPO))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("pages/protocols.py").run()
    assert not at.exception, [e.value for e in at.exception]
    a, b = at.selectbox(key="pair_a"), at.selectbox(key="pair_b")
    assert Path(a.value) == REPO / "checkpoints" / "elpv"
    assert Path(b.value).name == "elpv-224px" and (Path(b.value) / "csba-s0" / "run.json").is_file()
    assert "bundled record elpv-224px-h200/elpv-224px (15 runs, 224 px; run.json only)" in b.options
    assert at.info[0].value.startswith("Validation does not resolve A against B")
    texts = " ".join(m.value for m in at.markdown)
    assert "10 of 15 runs reach" in texts and "7 of 15 runs reach" in texts
