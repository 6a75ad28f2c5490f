"""AppTest of the Home, Confusion, Per-class F1, Gradient conflict and Attention pages.

Runs against a private copy of the tiny runs (one epoch, all five variants, 32 px) with:
* a second baseline seed (a copy of baseline-s0 with seed 1), so seed aggregation is exercised;
* csba and class_heads diagnosed with ``csba.diagnostics.run.diagnose_run``;
* gradnorm holding a hand-written partial ``diagnostics`` block (only the whole-model matrix)
  and a ``conflict_history``, to check the pages tolerate missing parts;
* baseline and focal not diagnosed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from csba.models import list_models, parameter_counts
from csba.store import atomic_write_json, read_run_json

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "app.py")
TIMEOUT = 60


def _texts(at: AppTest) -> str:
    parts = [*at.markdown, *at.caption, *at.info, *at.warning, *at.error, *at.subheader]
    return "\n".join(str(p.value) for p in parts)


def _no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


@pytest.fixture(scope="module")
def prepared_root(tiny_runs, tmp_path_factory):
    """A copy of the tiny runs root with seeds, diagnostics and a broken folder added."""
    from csba.diagnostics.run import diagnose_run

    root = tmp_path_factory.mktemp("app_pages") / "runs"
    shutil.copytree(tiny_runs["baseline"].parent.parent, root)
    ds_dir = root / tiny_runs["baseline"].parent.name
    # a second baseline seed (same predictions, so the test set matches)
    shutil.copytree(ds_dir / tiny_runs["baseline"].name, ds_dir / "baseline-s1")
    meta = read_run_json(ds_dir / "baseline-s1")
    meta["config"]["seed"] = 1
    atomic_write_json(ds_dir / "baseline-s1" / "run.json", meta)
    for v in ("csba", "class_heads"):
        diagnose_run(str(ds_dir / tiny_runs[v].name), per_class=4, device="cpu")
    # gradnorm: partial diagnostics written by hand, plus a conflict history
    gdir = ds_dir / tiny_runs["gradnorm"].name
    meta = read_run_json(gdir)
    c = meta["num_classes"]
    m = np.full((c, c), -0.3)
    np.fill_diagonal(m, 1.0)
    meta["diagnostics"] = {"gcm": {"matrix": m.tolist()}}
    meta["conflict_history"] = [
        {"epoch": e, "matrix": m.tolist(), "mean": -0.3, "std": 0.0} for e in (1, 2)
    ]
    atomic_write_json(gdir / "run.json", meta)
    # an unreadable run folder
    (root / "broken" / "bad-s0").mkdir(parents=True)
    (root / "broken" / "bad-s0" / "run.json").write_text("{not json")
    return root


@pytest.fixture
def runs_root(prepared_root, monkeypatch):
    monkeypatch.setenv("CSBA_RUNS_ROOT", str(prepared_root))
    monkeypatch.delenv("CSBA_DATA_ROOT", raising=False)
    monkeypatch.chdir(REPO)
    monkeypatch.syspath_prepend(str(REPO))
    return prepared_root


@pytest.fixture
def empty_root(tmp_path, monkeypatch):
    monkeypatch.setenv("CSBA_RUNS_ROOT", str(tmp_path / "none"))
    monkeypatch.chdir(REPO)
    monkeypatch.syspath_prepend(str(REPO))
    return tmp_path / "none"


def _app(page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    _no_exception(at)
    if page:
        at.switch_page(page)
        at.run()
        _no_exception(at)
    return at


def _good_runs(root: Path) -> int:
    return sum(1 for p in root.rglob("run.json") if "broken" not in p.parts)


# --------------------------------------------------------------------------------------------
# Home
# --------------------------------------------------------------------------------------------


def test_home_lists_every_run_and_the_broken_one(runs_root):
    at = _app()
    assert at.title[0].value == "CSBA Explorer"
    runs = at.dataframe[0].value
    assert len(runs) == _good_runs(runs_root) == 6
    assert set(runs["variant"]) == {"baseline", "csba", "gradnorm", "focal", "class_heads"}
    assert runs["diagnosed"].sum() == 3  # csba, class_heads, gradnorm (partial)
    assert {"accuracy", "macro-F1", "minority F1"} <= set(runs.columns)
    # the tiny runs train 1 epoch in batches of 16: both differ from the pinned protocol
    tiny = runs["protocol"][runs["variant"] == "baseline"].iloc[0]
    assert tiny == "epochs 1, batch_size 16", tiny
    assert any("is not valid JSON" in e.value for e in at.error)
    # class distribution and parameter table (paper Table 2): built when opened
    assert len(at.dataframe) == 1
    assert "training shares: " in " ".join(c.value for c in at.caption)
    at.session_state["home_dist_table"] = True
    at.session_state["home_params"] = True
    at.run()
    dist = at.dataframe[1].value
    assert list(dist.columns[:4]) == ["class", "train", "val", "test"]
    params = at.dataframe[2].value
    assert len(params) == len(list_models()) and (params["parameters"] > 0).all()
    at.multiselect(key="home_backbones").set_value(["resnet18"]).run()
    params = at.dataframe[2].value
    want = parameter_counts(3, ["resnet18"])
    got = params.loc[params["variant"] == "csba", "on resnet18"].iloc[0]
    assert got == want["resnet18"]["csba"] == 11_377_737  # 3 classes: 11,176,512 + 201,225
    assert params.loc[params["variant"] == "baseline", "parameters"].iloc[0] > 0
    assert at.get("plotly_chart") == [] and len(at.image) == 1  # the distribution: a picture
    # timm backbones: searched by name (no picker until a query), counted like the others
    at.text_input(key="home_timm_q").set_value("resnet10").run()
    hits = at.multiselect(key="home_timm").options
    assert "timm:resnet10t" in hits and all("resnet10" in h for h in hits)
    at.multiselect(key="home_timm").set_value(["timm:resnet10t"]).run()
    params = at.dataframe[2].value
    got = params.loc[params["variant"] == "baseline", "on timm:resnet10t"].iloc[0]
    assert got == 4_922_488 + 3 * (512 * 3 + 3)  # the backbone + three linear branches
    at.text_input(key="home_timm_q").set_value("no_such_model_xyz").run()
    assert at.multiselect(key="home_timm").options == ["timm:resnet10t"]  # the pick stays
    assert any("No timm model name contains" in c.value for c in at.caption)


def test_class_distribution_picture_draws_the_counts():
    from pages import figures as F

    meta = {
        "classes": ["a", "b"],
        "dataset": {"counts": {"train": [90, 10], "val": [9, 1], "test": [30, 3]}},
    }
    dist = F.class_distribution(meta)
    assert F.class_distribution_png(dist, "t")[:8] == b"\x89PNG\r\n\x1a\n"
    fig = F.class_distribution_static(dist, "t")
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]  # train a, b; val a, b; test a, b
    assert heights == [90, 10, 9, 1, 30, 3]
    labels = [t.get_text() for t in ax.texts]
    assert labels == ["90", "10", "9", "1", "30", "3"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train", "val", "test"]


def test_home_states_the_verdict_of_the_runs(runs_root):
    from csba.report import render_results_markdown

    at = _app()
    _no_exception(at)
    _, info = render_results_markdown(runs_root, "imagefolder")
    sentence = info["verdict"]["sentence"]
    assert "CSBA" in sentence and any(sentence in i.value for i in at.info)
    exp = at.expander[0]
    assert "All results for imagefolder" in exp.label
    assert not exp.markdown  # built only when opened
    at.session_state["home_results_imagefolder"] = True
    at.run()
    exp = at.expander[0]
    body = "\n".join(m.value for m in exp.markdown)
    assert "paper Table 2" in body and "paper Table 7" in body


def test_home_sees_a_new_run_without_restart(runs_root, tmp_path):
    at = _app()
    n = len(at.dataframe[0].value)
    src = next(p.parent for p in runs_root.rglob("run.json") if p.parent.name == "focal-s0")
    new = src.parent / "focal-s7"
    shutil.copytree(src, new)
    try:
        meta = json.loads((new / "run.json").read_text())
        meta["config"]["seed"] = 7
        atomic_write_json(new / "run.json", meta)
        at.run()
        _no_exception(at)
        assert len(at.dataframe[0].value) == n + 1
    finally:
        shutil.rmtree(new)


def _app_with_extra(text: str) -> AppTest:
    # The sidebar input lives in app.py; AppTest drops entrypoint widgets on a rerun, so the
    # value is set before the first run instead of typed in.
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["csba_extra_runs"] = text
    at.run()
    _no_exception(at)
    return at


def test_extra_folder_outside_the_roots_is_refused(runs_root):
    at = _app_with_extra("/etc")
    assert any("'/etc' refused" in e.value for e in at.sidebar.error)
    assert len(at.dataframe[0].value) == 6  # the page keeps working


def test_extra_folder_under_the_data_root_is_added(runs_root, tmp_path, monkeypatch):
    extra = tmp_path / "data_root" / "elsewhere"
    src = next(p.parent for p in runs_root.rglob("run.json") if p.parent.name == "focal-s0")
    shutil.copytree(src, extra / "focal-s0")
    monkeypatch.setenv("CSBA_DATA_ROOT", str(tmp_path / "data_root"))
    at = _app_with_extra(f"{extra}, {tmp_path / 'data_root' / 'missing'}")
    assert any("no such folder" in e.value for e in at.sidebar.error)
    assert len(at.dataframe[0].value) == 7


def test_every_page_says_what_to_do_without_runs(empty_root):
    at = _app()
    assert any("No runs found" in i.value for i in at.info)
    assert len(at.dataframe) == 1  # the parameter table still shows
    for page in ("pages/confusion.py", "pages/f1.py", "pages/conflict.py", "pages/attention.py"):
        at.switch_page(page)
        at.run()
        _no_exception(at)
        assert any("No runs found" in i.value for i in at.info), page
        assert "python -m csba train" in at.info[0].value
    at.switch_page("pages/protocols.py")
    at.run()
    _no_exception(at)
    assert "Pairing needs two folders of runs" in at.info[0].value


def test_protocols_page_pairs_two_folders(prepared_root, tmp_path, monkeypatch):
    root = tmp_path / "runs"
    shutil.copytree(prepared_root, root)
    ds = next(p for p in root.iterdir() if p.name != "broken")
    other = root / "cosine"
    for k, name in enumerate(("baseline-s0", "csba-s0", "focal-s0")):
        shutil.copytree(ds / name, other / name)
        meta = read_run_json(other / name)
        meta["config"].update(lr_schedule="cosine", keep="last")
        meta["metrics"]["val"]["macro_f1"] += 0.01 * (k + 1)
        atomic_write_json(other / name / "run.json", meta)
    monkeypatch.setenv("CSBA_RUNS_ROOT", str(root))
    monkeypatch.chdir(REPO)
    monkeypatch.syspath_prepend(str(REPO))
    at = _app("pages/protocols.py")
    at.selectbox(key="pair_a").set_value(ds)
    at.selectbox(key="pair_b").set_value(other)
    at.select_slider(key="pair_nres").set_value(200)
    at.run()
    _no_exception(at)
    assert not at.error, [e.value for e in at.error]
    assert at.info[0].value.startswith("Validation")  # the verdict sentence
    texts = _texts(at)
    assert "lr_schedule cosine, keep last" in texts and "3 of 3 runs reach" not in texts
    summary = at.dataframe[0].value
    f1 = summary[summary["metric"] == "val macro-F1"].iloc[0]
    assert f1["pairs"] == 3 and f1["B higher"] == "3/3"
    assert abs(f1["B - A"] - 0.02) < 1e-9  # +0.01, +0.02, +0.03
    pairs = at.dataframe[1].value
    assert list(pairs["variant"]) == ["baseline", "csba", "focal"]
    assert len(at.get("plotly_chart")) == 1
    at.number_input(key="pair_bar_acc").set_value(0.0)
    at.number_input(key="pair_bar_f1").set_value(0.0)
    at.run()
    assert "3 of 3 runs reach" in _texts(at)  # a bar of zero: every run reaches it
    at.selectbox(key="pair_b").set_value(ds)
    at.run()
    assert "Choose two different folders." in [i.value for i in at.info]


# --------------------------------------------------------------------------------------------
# Confusion matrices
# --------------------------------------------------------------------------------------------


def test_confusion_page(runs_root):
    at = _app("pages/confusion.py")
    chosen = at.sidebar.multiselect(key="confusion_runs").value
    assert len(chosen) == 5  # one run per variant by default
    charts = at.get("plotly_chart")
    assert len(charts) == 1  # every run's matrix in one figure; the difference's tab not built
    grid = json.loads(charts[0].proto.spec)
    # per run a heatmap and its click overlay (one marker per cell, tagged with the run's place)
    assert [t["type"] for t in grid["data"]] == ["heatmap", "scatter"] * 5
    data = [_plotly_array(t["customdata"]) for t in grid["data"][1::2]]
    assert [set(d[:, 0].astype(int)) for d in data] == [{k} for k in range(5)]
    n_cells = len(at.selectbox(key="cm_true").options) ** 2
    assert all(d.shape[0] == n_cells for d in data)
    _confusion_cell_images(at)
    at.toggle(key="cm_norm").set_value(False).run()
    _no_exception(at)
    at.radio(key="cm_split").set_value("val").run()
    _no_exception(at)
    assert any("test predictions only" in c.value for c in at.caption)
    at.session_state["cm_section"] = "Difference of two runs"
    at.run()
    _no_exception(at)
    assert len(at.get("plotly_chart")) == 1  # the difference only
    diff = json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]
    assert diff["zmin"] == -diff["zmax"]  # centred on no difference
    at.sidebar.multiselect(key="confusion_runs").set_value(chosen[:1]).run()
    _no_exception(at)
    assert any("at least two runs" in i.value for i in at.info)


def _plotly_array(v) -> np.ndarray:
    """An array of a figure spec: plotly sends numeric arrays as base64 (dtype, bdata, shape)."""
    if not isinstance(v, dict):
        return np.asarray(v)
    import base64

    a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"])
    return a.reshape([int(n) for n in str(v.get("shape", a.size)).split(",")])


def _confusion_cell_images(at) -> None:
    """A cell (true a, predicted b) chosen with the pickers (what a click on the grid sets):
    its test images per run (three side by side), most confident first, counted as the matrix
    counts them; two runs: the images one gets right and the other wrong, both ways."""
    from pages.confusion_images import K

    assert at.subheader[0].value == "Images of a cell"
    assert at.selectbox(key="cm_true").value is None  # no cell until one is asked for
    assert not [c for c in at.caption if " test images of " in c.value] and not _count(at, "Image")
    classes = at.selectbox(key="cm_true").options
    at.selectbox(key="cm_true").set_value(classes[0])
    for b in classes:  # the first column of row 0 that holds an image (tiny runs: few do)
        at.selectbox(key="cm_pred").set_value(b).run()
        _no_exception(at)
        assert not at.error, [e.value for e in at.error]
        counts = [c.value for c in at.caption if " test images of " in c.value]
        assert len(counts) == 3  # MAX_RUNS side by side
        n = [int(c.split()[0]) for c in counts]
        if sum(n):
            break
    assert sum(n) > 0
    caps = [c.value for c in at.caption if c.value.startswith("Right in ")]
    assert len(caps) == 2  # both ways
    assert _count(at, "Image") == sum(min(K, k) for k in n) + sum(
        min(K, int(c.split(": ")[1].split()[0])) for c in caps
    )


# --------------------------------------------------------------------------------------------
# Per-class F1
# --------------------------------------------------------------------------------------------


def test_f1_page_with_seed_aggregation_and_deltas(runs_root):
    at = _app("pages/f1.py")
    at.select_slider(key="f1_nres").set_value(200).run()
    _no_exception(at)
    assert not at.error, [e.value for e in at.error]
    overall = at.dataframe[0].value
    assert "baseline (32px; mean of 2 seeds)" in set(overall["variant / run"])
    assert len(overall) == 5  # two baseline seeds aggregated into one row
    assert "[" in overall["macro-F1"].iloc[0]  # interval shown with the value
    assert len(at.get("plotly_chart")) == 1  # only the open tab (scores) is built
    bars = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert {t["xaxis"] for t in bars["data"]} == {"x"}  # F1 alone by default: one panel
    at.multiselect(key="f1_metrics").set_value(["f1", "recall"]).run()
    bars = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert {t["xaxis"] for t in bars["data"]} == {"x", "x2"}
    at.session_state["f1_section"] = "Differences against the reference"
    at.run()
    _no_exception(at)
    texts = _texts(at)
    assert "Differences against baseline (32px; mean of 2 seeds)" in texts
    # per-run view: one row per run, deltas against the single reference run
    at.toggle(key="f1_agg").set_value(False).run()
    _no_exception(at)
    deltas = at.dataframe[-1].value
    assert {"Δ [95% CI]", "significant"} <= set(deltas.columns)
    assert "baseline s0" in deltas["reference"].iloc[0]
    at.session_state["f1_section"] = "Scores"
    at.run()
    assert len(at.dataframe[0].value) == 6


# --------------------------------------------------------------------------------------------
# Gradient conflict
# --------------------------------------------------------------------------------------------


def test_conflict_page(runs_root):
    at = _app("pages/conflict.py")
    texts = _texts(at)
    assert "Not diagnosed yet" in texts and "python -m csba diagnose" in at.code[0].value
    charts = at.get("plotly_chart")
    assert len(charts) == 1  # every diagnosed run's matrix in one figure; the difference: a tab
    grid = json.loads(charts[0].proto.spec)
    heatmaps = [t for t in grid["data"] if t["type"] == "heatmap"]
    assert len(heatmaps) >= 3 and len(grid["data"]) == 2 * len(heatmaps)  # each with its overlay
    titles = [a["text"] for a in grid["layout"]["annotations"]]
    assert all(": mean cos " in t for t in titles), titles
    pairs = at.table[0].value  # a static table (no data grid to load)
    assert set(pairs.columns) == {"run", "rank", "class a", "class b", "cos"}
    assert (pairs["cos"].astype(float) <= 1).all()
    groups = at.selectbox(key="gcm_group").options
    assert groups[0] == "whole model" and "fire8" in groups
    at.selectbox(key="gcm_group").set_value("fire8").run()
    _no_exception(at)
    assert any("No 'fire8' matrix" in w.value for w in at.warning)  # gradnorm has none
    # only the open tab is built: the other sections' figures and tables are not there yet
    assert not any(s.value.startswith("Optimisation") for s in at.subheader)
    at.session_state["gcm_section"] = "Optimisation and generalisation"
    at.run()
    _no_exception(at)
    assert not at.get("plotly_chart")
    table = at.dataframe[-1].value
    assert {"generalisation gap", "mean conflict (cos)", "Δ vs baseline (same seed)"} <= set(
        table.columns
    )
    for section in ("Over training", "Branch shares", "Conflict vs minority gain"):
        at.session_state["gcm_section"] = section
        at.run()
        _no_exception(at)
        assert not at.error, (section, [e.value for e in at.error])
    assert at.session_state["gcm_group"] == "fire8"  # the matrices' choice survives the tabs
    at.session_state["gcm_section"] = "Difference of two runs"
    at.run()
    at.selectbox(key="gcm_group").set_value("whole model").run()
    _no_exception(at)
    diff = json.loads(at.get("plotly_chart")[0].proto.spec)["data"]
    assert [t["type"] for t in diff] == ["heatmap", "scatter"]  # clickable too


def test_confusion_grid_shows_each_run_on_one_shared_scale():
    from pages import figures as F

    a = np.array([[3.0, 1.0], [0.0, 2.0]])
    b = np.array([[2.0, 2.0], [1.0, 9.0]])
    fig = F.confusion_grid({"a": a, "b": b}, ["x", "y"], normalize=True, cols=3)
    ha, oa, hb, ob = fig.data  # per run: the heatmap and its click overlay
    np.testing.assert_allclose(ha.z, [[0.75, 0.25], [0.0, 1.0]])  # rows sum to one
    # overlay: one marker per cell (row-major), customdata [tag, i, j, z, count, rate]
    assert list(ob.x) == ["x", "y", "x", "y"] and list(ob.y) == ["x", "x", "y", "y"]
    np.testing.assert_allclose(np.asarray(ob.customdata)[2], [1, 1, 0, 1 / 10, 1.0, 0.1])
    np.testing.assert_allclose(np.asarray(oa.customdata)[1], [0, 0, 1, 0.25, 1.0, 0.25])
    assert "count %{customdata[4]:.0f}" in ob.hovertemplate  # the heatmap's hover, moved
    assert ob.xaxis == "x2" and ob.marker.opacity == 0 and ob.selected.marker.opacity == 1
    assert ha.text[0][1] == "0.25"  # the rate in the cell, the count in the hover
    np.testing.assert_allclose(np.asarray(ha.customdata)[0, 1], [1.0, 0.25])
    assert ha.coloraxis == hb.coloraxis == "coloraxis"
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (0, 1)
    assert [x.text for x in fig.layout.annotations] == ["a (n=6)", "b (n=14)"]
    counts = F.confusion_grid({"a": a, "b": b}, ["x", "y"], normalize=False, zmax=9.0)
    np.testing.assert_allclose(counts.data[2].z, b)
    assert counts.layout.coloraxis.cmax == 9.0 and counts.data[2].text[1][1] == "9"
    # the second matrix sits in the second column of the first row
    assert counts.data[2].xaxis == "x2" and counts.data[2].yaxis == "y2"


def test_attribution_grid_puts_every_run_in_one_figure():
    from pages import figures as F

    classes = ["a", "b", "c"]
    gated = {
        "classes": classes,
        "probs": np.array([0.2, 0.7, 0.1]),
        "branch_logits": np.array([[1.0, -2.0, 0.5], [0.0, 1.0, 0.0], [0.5, 0.5, -0.5]]),
        "branch_labels": ["branch 1", "branch 2", "branch 3"],
        "attention": np.full((3, 8), 0.5),
    }
    plain = gated | {"attention": None, "branch_logits": np.ones((3, 3)) * 0.5}
    heads = gated | {
        "branch_logits": np.array([[0.3], [4.0], [-0.4]]),
        "branch_labels": ["head a", "head b", "head c"],
        "attention": np.full((3, 8), 0.25),
    }
    fig = F.attribution_grid([("csba", gated, 2), ("base", plain, 1), ("heads", heads, 0)])
    assert [a.text for a in fig.layout.annotations][:3] == ["csba", "base", "heads"]
    bars = [t for t in fig.data if t.type == "bar"]
    maps = [t for t in fig.data if t.type == "heatmap"]
    assert len(bars) == 3 and len(maps) == 3 + 2  # logits for all, attention for the gated two
    assert list(bars[0].marker.color) == ["#1f77b4", "#1f77b4", "#d62728"]  # explained class
    assert bars[2].marker.color[0] == "#d62728"
    csba_logits, csba_att, base_logits, head_logits, head_att = maps  # in run order
    # one row per class, as the bars; one column per branch (heads: their own logit)
    np.testing.assert_allclose(csba_logits.z, gated["branch_logits"].T)
    assert list(csba_logits.y) == classes and list(csba_logits.x) == ["1", "2", "3"]
    np.testing.assert_allclose(head_logits.z, heads["branch_logits"])
    assert list(head_logits.x) == ["own"]
    # one symmetric logit scale for every run (the largest |logit| of all: 4.0), one for gates
    assert {m.coloraxis for m in (csba_logits, base_logits, head_logits)} == {"coloraxis"}
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (-4.0, 4.0)
    assert csba_att.coloraxis == head_att.coloraxis == "coloraxis2"
    assert list(csba_att.y) == ["1", "2", "3"] and list(head_att.y) == ["a", "b", "c"]
    assert "no gates" in [a.text for a in fig.layout.annotations]  # the plain run
    lo, hi = fig.layout.yaxis4.domain  # the logits row: its colour bar beside it
    assert lo <= fig.layout.coloraxis.colorbar.y <= hi
    one = F.attribution_grid([("base", plain, 0)])  # no run with gates: two rows
    assert len(one.data) == 2 and "coloraxis2" not in one.to_plotly_json()["layout"]


def test_attribution_grid_static_draws_the_same_numbers():
    import io

    from matplotlib.colors import to_hex
    from PIL import Image

    from pages import figures as F

    gated = {
        "classes": ["a", "b", "c"],
        "probs": np.array([0.2, 0.7, 0.1]),
        "branch_logits": np.array([[1.0, -2.0, 0.5], [0.0, 1.0, 0.0], [0.5, 0.5, -0.5]]),
        "branch_labels": ["branch 1", "branch 2", "branch 3"],
        "attention": np.linspace(0, 1, 24).reshape(3, 8),
    }
    plain = gated | {"attention": None, "branch_logits": np.ones((3, 3)) * 0.5}
    heads = gated | {"branch_logits": np.array([[0.3], [4.0], [-0.4]])}
    runs = [("csba", gated, 2), ("base", plain, 1), ("heads", heads, 0)]
    fig = F.attribution_grid_static(runs)
    plots = [ax for ax in fig.axes if ax.get_title() or ax.images or ax.patches]
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["csba", "base", "heads"]
    bars = [ax for ax in fig.axes if ax.patches]
    widths = [[p.get_width() for p in ax.patches] for ax in bars]
    np.testing.assert_allclose(widths[0], gated["probs"])
    colours = [to_hex(p.get_facecolor()) for p in bars[0].patches]
    assert colours == ["#1f77b4", "#1f77b4", "#d62728"]  # the explained class red
    images = [ax.images[0] for ax in plots if ax.images]
    # in run order: csba logits, csba gates, base logits, heads logits, heads gates
    np.testing.assert_allclose(images[0].get_array(), gated["branch_logits"].T)
    np.testing.assert_allclose(images[3].get_array(), heads["branch_logits"])
    np.testing.assert_allclose(images[1].get_array(), gated["attention"])
    assert {im.get_clim() for im in (images[0], images[2], images[3])} == {(-4.0, 4.0)}
    assert images[1].get_clim() == images[4].get_clim() == (0.0, 1.0)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert "no gates" in texts and "0.70" in texts and "-2.0" in texts  # values in the cells
    png = F.attribution_grid_png(runs)
    assert Image.open(io.BytesIO(png)).size == (
        round(fig.get_figwidth() * 100),
        round(fig.get_figheight() * 100),
    )


def test_conflict_colour_scale_is_centred_and_red_for_conflict():
    from pages import figures as F

    fig = F.conflict_heatmap(np.array([[1.0, -0.5], [-0.5, 1.0]]), ["a", "b"], title="t")
    h = fig.data[0]
    assert (h.zmin, h.zmax) == (-1, 1)
    low, high = h.colorscale[0][1], h.colorscale[-1][1]
    r, _, b = (int(v) for v in low[4:-1].split(","))
    assert r > b  # -1 is red
    r, _, b = (int(v) for v in high[4:-1].split(","))
    assert b > r  # +1 is blue


# --------------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------------


def test_attention_page(runs_root):
    at = _app("pages/attention.py")
    assert not at.error, [e.value for e in at.error]
    runs = at.selectbox(key="att_run").options
    assert {r.split(" ")[0] for r in runs} == {"csba", "class_heads"}
    texts = _texts(at)
    assert "No attention" in texts  # gradnorm is diagnosed but has no gates
    assert "Not diagnosed yet" in texts
    at.toggle(key="att_dev").set_value(True).run()
    _no_exception(at)
    assert len(at.get("plotly_chart")) == 1  # only the open tab is built
    at.session_state["att_section"] = "Branch overlap"
    at.run()
    at.selectbox(key="att_overlap_class").set_value(
        at.selectbox(key="att_overlap_class").options[1]
    ).run()
    _no_exception(at)
    assert len(at.get("plotly_chart")) == 2 * 2  # csba, class_heads: Jaccard and cosine
    at.session_state["att_section"] = "Angles between class means"
    at.run()
    _no_exception(at)
    assert len(at.get("plotly_chart")) >= 2


# --------------------------------------------------------------------------------------------
# Downloads
# --------------------------------------------------------------------------------------------


def test_figure_html_is_self_contained():
    from pages import figures as F
    from pages.common import _fig_bytes

    fig = F.conflict_heatmap(np.eye(2), ["a", "b"], title="t")
    data, ext, mime = _fig_bytes(fig)
    html = data.decode()
    assert ext == "html" and mime == "text/html"
    assert '<script src="http' not in html and "cdn.plot.ly" not in html.split("</script>")[0]
    assert len(data) > 1_000_000  # plotly.js is embedded


# --------------------------------------------------------------------------------------------
# pages.common outside a page
# --------------------------------------------------------------------------------------------


def test_get_run_caches_and_reports_errors_in_one_line(runs_root):
    from pages import common

    good = next(p.parent for p in runs_root.rglob("run.json") if p.parent.name == "csba-s0")
    run = common.get_run(good)
    assert run is not None and run.variant == "csba"
    assert common.get_run(str(good)) is run  # cached resource
    assert common.get_run(runs_root / "broken" / "bad-s0") is None
    common.clear_run_caches()
    assert common.get_run(good) is not run


def test_run_labels_are_unique(runs_root):
    from pages import common

    infos = [i for i in common.all_runs() if i.meta is not None]
    labels = common.run_labels(infos)
    assert len(set(labels.values())) == len(infos)
    assert labels[str(next(i.path for i in infos if i.path.name == "csba-s0"))] == (
        "csba s0 (32px)"
    )


@pytest.mark.parametrize(
    "page", ["pages/confusion.py", "pages/f1.py", "pages/conflict.py", "pages/attention.py"]
)
def test_a_rerun_that_changes_nothing_builds_no_figure(runs_root, page):
    from pages.common import FIGURE_BUILDS

    at = _app(page)
    assert at.get("plotly_chart")
    built = FIGURE_BUILDS["count"]
    at.run()
    _no_exception(at)
    assert FIGURE_BUILDS["count"] == built  # every figure came from the cache


def test_the_server_logs_its_script_times_when_asked(runs_root, tmp_path, monkeypatch):
    log = tmp_path / "scripts.jsonl"
    monkeypatch.setenv("CSBA_SCRIPT_LOG", str(log))
    _app()  # (AppTest logs only its first run; a real server logs every one: bench_dashboard)
    lines = [json.loads(s) for s in log.read_text().splitlines()]
    assert lines and lines[0]["page"] == "home"
    assert all(r["finished"] and r["seconds"] > 0 for r in lines)


def _count(at, kind: str) -> int:
    n, stack = 0, [at._tree]
    while stack:
        node = stack.pop()
        n += type(node).__name__ == kind
        stack.extend(getattr(node, "children", {}).values())
    return n


def test_conflict_images_tab(runs_root):
    """The "Images behind a conflict" tab on the diagnosed tiny runs (csba and class_heads have
    per-example scores): a one-click pair picker, thumbnails of each class against the other
    per run, label-error candidates by a chosen ranking, the two runs' agreement."""
    at = _app("pages/conflict.py")
    at.session_state["gcm_section"] = "Images behind a conflict"
    at.run()
    _no_exception(at)
    assert not at.error, [e.value for e in at.error]
    caps = [c.value for c in at.caption]
    assert any(c.startswith("No per-example scores") and "gradnorm s0" in c for c in caps)
    # 2 runs x (a against b, b against a, candidates), K = 4 thumbnails each (tiny classes: fewer)
    assert _count(at, "Image") == 24
    pills = at.get("button_group")[0]
    # the pills read "a ↔ b (mean cos)", most conflicting first (which pair that is depends on
    # the tiny runs' training, so the expected pairs are read off the pills)
    pairs = [o.content.split(" (")[0].split(" ↔ ") for o in pills.proto.options]
    assert len(pairs) == 3 and sorted(map(sorted, pairs)) == [
        ["alpha", "beta"],
        ["alpha", "gamma"],
        ["beta", "gamma"],
    ]
    (a, b), (c, d) = pairs[0], pairs[2]
    assert caps.count(f"Training images of {a} most against {b} (alignment)") == 2
    pills.set_value(2).run()  # the third pair, one click
    _no_exception(at)
    caps = [c.value for c in at.caption]
    assert caps.count(f"Training images of {c} most against {d} (alignment)") == 2
    assert caps.count(f"Training images of {d} most against {c} (alignment)") == 2
    at.selectbox(key="img_ranking").set_value("confidence in the label").run()
    _no_exception(at)
    agree = at.table[-1].value
    assert next(iter(agree.columns)) == "runs" and "Spearman" in agree.columns
    assert agree["Spearman"].astype(float).between(-1, 1).all()
