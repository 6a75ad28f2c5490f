"""A run's identity (csba.identity) and the pages' defaults that rest on it.

* known answers for identity, labels, group names and statuses;
* ``compare`` keeps two backbones of one variant apart as seed groups;
* two backbones of the same variant through every page that picks runs: labels name the
  backbone, Per-class F1 aggregates each backbone's seeds apart (mean and seed sd over the same
  runs), the Runs page has a backbone column, a layer-group difference across backbones says
  the layers differ instead of subtracting them;
* a Training-page run cancelled after its first epoch: listed as cancelled, and no page's
  default selection changes.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from conftest import open_page
from streamlit.testing.v1 import AppTest

from csba.identity import (
    RunIdentity,
    group_label,
    group_names,
    identity,
    is_finished,
    method_label,
    protocol_changes,
    run_label,
)
from csba.store import atomic_write_json, read_run_json

REPO = Path(__file__).resolve().parents[1]
PICKERS = {  # page -> the key of its run picker (multiselect)
    "pages/confusion.py": "confusion_runs",
    "pages/f1.py": "f1_runs",
    "pages/conflict.py": "conflict_runs",
    "pages/attention.py": "attention_runs",
    "pages/attributions.py": "attributions_runs",
}


def _meta(variant="baseline", backbone=None, seed=0, size=128, status="completed", **cfg):
    return {
        "variant": variant,
        "status": status,
        "dataset": {"name": "elpv", "image_size": size},
        "config": {"backbone": backbone, "seed": seed, **cfg},
    }


# --------------------------------------------------------------------------------------------
# csba.identity: known answers
# --------------------------------------------------------------------------------------------


def test_labels_name_the_backbone_when_not_the_default_and_always_the_seed():
    assert run_label(_meta()) == "baseline s0 (128px)"
    assert run_label(_meta(backbone="trifire", seed=2)) == "baseline s2 (128px)"
    assert run_label(_meta(backbone="resnet18")) == "baseline s0 (resnet18, 128px)"
    pre = _meta("csba", backbone="resnet18", seed=1, pretrained="imagenet")
    assert run_label(pre) == "csba s1 (resnet18-imagenet, 128px)"
    assert method_label(pre) == "csba-resnet18-imagenet"
    assert run_label(_meta(size=16, status="cancelled")) == "baseline s0 (16px) [cancelled]"
    assert run_label(_meta(epochs=3), protocol=True) == "baseline s0 (128px, epochs 3)"


def test_identity_is_everything_but_the_seed():
    a, b = identity(_meta(seed=0)), identity(_meta(seed=5))
    assert a == b and hash(a) == hash(b)
    assert identity(_meta(backbone="resnet18")) != a  # backbone
    assert identity(_meta(size=64)) != a  # image size
    assert identity(_meta("csba")) != a  # variant
    assert identity(_meta(epochs=3)) != a  # protocol
    assert identity(_meta(epochs=3)).protocol == (("epochs", "3"),)
    assert protocol_changes(_meta(seed=3, device="cuda")) == {}  # seed and device are not protocol
    assert identity(_meta(backbone="trifire")) == a  # None and "trifire" are one backbone
    assert isinstance(a, RunIdentity) and a.method == "baseline"
    # head and method: from run.json's composition, else what the variant name stands for
    assert (a.head, a.method_name) == ("baseline", "weighted")
    combo = identity(_meta("csba+ldam_drw"))
    assert (combo.head, combo.method_name, combo.method) == ("csba", "ldam_drw", "csba+ldam_drw")
    assert combo != identity(_meta("ldam_drw")) != identity(_meta("csba"))
    assert (identity(_meta("pcgrad_control")).head, identity(_meta("focal")).method_name) == (
        "baseline",
        "focal",
    )
    assert identity({**_meta("csba"), "composition": {"head": "csba", "method": "weighted"}}) == (
        identity(_meta("csba"))
    )
    assert run_label(_meta("csba+ldam_drw", seed=2)) == "csba+ldam_drw s2 (128px)"


def test_group_names_and_labels():
    t, r = identity(_meta()), identity(_meta(backbone="resnet18"))
    assert group_names([t, r, t]) == {t: "baseline", r: "baseline-resnet18"}
    small = identity(_meta(size=64))
    assert group_names([t, small]) == {t: "baseline@128px", small: "baseline@64px"}
    short = identity(_meta(epochs=3))
    assert group_names([t, short]) == {t: "baseline", short: "baseline [epochs 3]"}
    assert group_label(r, 3) == "baseline (resnet18, 128px; mean of 3 seeds)"
    assert group_label(short, 2, protocol=True) == "baseline (128px, epochs 3; mean of 2 seeds)"


def test_status():
    assert is_finished(_meta()) and is_finished({"variant": "x"})  # before statuses: finished
    assert not is_finished(_meta(status="cancelled"))
    assert not is_finished(_meta(status="interrupted"))


# --------------------------------------------------------------------------------------------
# compare: seed groups per backbone
# --------------------------------------------------------------------------------------------


def _add_seed(run_dir: Path, seed: int) -> Path:
    """A copy of ``run_dir`` as seed ``seed`` (same predictions, so the test set matches)."""
    dest = run_dir.parent / f"{run_dir.name.rsplit('-s', 1)[0]}-s{seed}"
    shutil.copytree(run_dir, dest)
    meta = read_run_json(dest)
    meta["config"]["seed"] = seed
    atomic_write_json(dest / "run.json", meta)
    return dest


@pytest.fixture(scope="module")
def two_backbones(tiny_folder, tmp_path_factory) -> Path:
    """baseline on trifire and on resnet18, seeds 0 and 1 each, csba on resnet18 seed 0 and the
    HEAD+METHOD csba+ldam_drw on trifire seed 0 (one epoch at 32 px, diagnosed)."""
    from csba.diagnostics.run import diagnose_run
    from csba.train import TrainConfig, train

    root = tmp_path_factory.mktemp("two_backbones") / "runs"
    for variant, backbone in (
        ("baseline", "trifire"),
        ("baseline", "resnet18"),
        ("csba", "resnet18"),
        ("csba+ldam_drw", "trifire"),
    ):
        cfg = TrainConfig(
            dataset="imagefolder",
            data_root=str(tiny_folder),
            variant=variant,
            backbone=backbone,
            image_size=32,
            epochs=1,
            batch_size=16,
            out=str(root),
        )
        diagnose_run(train(cfg)["run_dir"], per_class=4, device="cpu")
    ds = next(root.glob("*/baseline-s0")).parent
    _add_seed(ds / "baseline-s0", 1)
    _add_seed(ds / "baseline-resnet18-s0", 1)
    return root


def test_compare_groups_seeds_per_backbone(two_backbones):
    from csba.report import compare_runs

    paths = sorted(str(p.parent) for p in two_backbones.rglob("run.json"))
    tables = compare_runs(paths, n_resamples=50)["tables"]
    seeds = tables["seeds"]
    n = seeds[seeds["metric"] == "macro_f1"].set_index("variant")["n"].to_dict()
    assert n == {"baseline": 2, "baseline-resnet18": 2}  # never one group of four
    assert "csba+ldam_drw" in set(tables["summary"]["variant"])  # a HEAD+METHOD run, by name


# --------------------------------------------------------------------------------------------
# Every page with two backbones of one variant
# --------------------------------------------------------------------------------------------


@pytest.fixture
def env(monkeypatch, tiny_folder):
    def use(root: Path) -> Path:
        monkeypatch.setenv("CSBA_RUNS_ROOT", str(root))
        monkeypatch.setenv("CSBA_DATA_ROOT", str(tiny_folder.parent))
        monkeypatch.chdir(REPO)
        monkeypatch.syspath_prepend(str(REPO))
        return root

    return use


def _runs(root: Path) -> list[str]:
    return sorted(str(p.parent) for p in root.rglob("run.json"))


def _select_all(at: AppTest, key: str, root: Path) -> list[str]:
    """Choose every run; returns the picker's labels (AppTest's options are the labels)."""
    box = at.sidebar.multiselect(key=key)
    box.set_value(_runs(root)).run()
    assert not at.exception, [e.value for e in at.exception]
    return list(box.options)


@pytest.mark.parametrize("page", list(PICKERS))
def test_every_picker_names_the_backbone(two_backbones, env, page):
    env(two_backbones)
    at = open_page(page)
    labels = _select_all(at, PICKERS[page], two_backbones)
    assert {"baseline s0 (32px)", "baseline s1 (32px)"} <= set(labels), labels
    assert {"baseline s0 (resnet18, 32px)", "baseline s1 (resnet18, 32px)"} <= set(labels)
    assert "csba s0 (resnet18, 32px)" in labels
    assert "csba+ldam_drw s0 (32px)" in labels
    assert not at.error, [e.value for e in at.error]


def test_runs_page_has_a_backbone_column(two_backbones, env):
    env(two_backbones)
    at = open_page("pages/home.py")
    runs = at.dataframe[0].value
    got = sorted(zip(runs["variant"], runs["head"], runs["method"], runs["backbone"], strict=True))
    assert got == sorted(
        [("baseline", "baseline", "weighted", "trifire")] * 2
        + [("baseline", "baseline", "weighted", "resnet18")] * 2
        + [("csba", "csba", "weighted", "resnet18")]
        + [("csba+ldam_drw", "csba", "ldam_drw", "trifire")]
    )


def test_f1_aggregates_each_backbones_seeds_apart(two_backbones, env):
    env(two_backbones)
    at = open_page("pages/f1.py")
    at.select_slider(key="f1_nres").set_value(200).run()
    overall = at.dataframe[0].value.set_index("variant / run")
    assert set(overall.index) == {
        "baseline (32px; mean of 2 seeds)",
        "baseline (resnet18, 32px; mean of 2 seeds)",
        "csba s0 (resnet18, 32px)",
        "csba+ldam_drw s0 (32px)",
    }
    assert overall.loc["baseline (resnet18, 32px; mean of 2 seeds)", "runs"] == 2
    # the seed sd comes from the same two runs as the mean (two copies: sd 0)
    for group in ("baseline (32px; mean of 2 seeds)", "baseline (resnet18, 32px; mean of 2 seeds)"):
        assert overall.loc[group, "macro-F1 seed sd"] == "0.000"


def test_layer_group_difference_across_backbones_is_refused(two_backbones, env):
    env(two_backbones)
    at = open_page("pages/conflict.py")
    trifire = next(p for p in _runs(two_backbones) if p.endswith("/baseline-s0"))
    resnet = next(p for p in _runs(two_backbones) if p.endswith("/baseline-resnet18-s0"))
    at.sidebar.multiselect(key="conflict_runs").set_value([trifire, resnet]).run()
    at.session_state["gcm_section"] = "Difference of two runs"  # its own tab
    at.run()
    groups = at.selectbox(key="gcm_group").options
    shared = next(g for g in groups if g != "whole model")
    at.selectbox(key="gcm_group").set_value(shared).run()
    assert not at.exception, [e.value for e in at.exception]
    warnings = " ".join(w.value for w in at.warning)
    assert "different backbones" in warnings and "share a name" in warnings, warnings
    assert "gcm_diff" not in [c.key for c in at.get("plotly_chart")]
    infos = " ".join(i.value for i in at.info)
    assert "different set of layers in each backbone" in infos, infos
    at.selectbox(key="gcm_group").set_value("whole model").run()  # allowed, with a note
    assert "gcm_diff" in [c.key for c in at.get("plotly_chart")]
    assert "measured on different parameters" in " ".join(i.value for i in at.info)


# --------------------------------------------------------------------------------------------
# A cancelled Training run changes no page's defaults
# --------------------------------------------------------------------------------------------


def _defaults() -> dict[str, list[str]]:
    out = {}
    for page, key in PICKERS.items():
        at = open_page(page)
        out[page] = list(at.sidebar.multiselect(key=key).value)
    at = open_page("pages/conflict.py")
    at.session_state["gcm_section"] = "Conflict vs minority gain"
    at.run()
    out["gain size"] = [at.selectbox(key="gain_size").value]
    return out


def _train_and_cancel_after_one_epoch(tiny_folder) -> Path:
    """Start baseline (50 epochs, 16 px) on the Training page; cancel once epoch 1 is done."""
    from pages.common import job_manager

    at = open_page("pages/training.py")
    at.selectbox(key="train_dataset").set_value("imagefolder").run()
    at.text_input(key="train_root_imagefolder").set_value(str(tiny_folder))
    at.multiselect(key="train_variants").set_value(["baseline"])
    at.number_input(key="train_epochs").set_value(50)
    at.number_input(key="train_size").set_value(16)
    at.number_input(key="train_batch").set_value(4)
    at.button(key="train_start").click().run()
    manager = job_manager()  # the page's own queue (one per process)
    deadline = time.monotonic() + 120
    while True:
        job = manager.snapshot()[-1]
        if job.runs[0].history:  # the first epoch is done
            break
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    manager.cancel(job.id)
    while manager.job(job.id).status not in ("cancelled", "completed", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    return Path(manager.job(job.id).runs[0].run_dir)


@pytest.mark.slow
def test_a_cancelled_training_run_changes_no_default(tiny_runs, tiny_folder, tmp_path, env):
    root = tmp_path / "runs"
    shutil.copytree(tiny_runs["baseline"].parent.parent, root)
    env(root)
    before = _defaults()
    run_dir = _train_and_cancel_after_one_epoch(tiny_folder)
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "cancelled" and meta["epochs_run"] >= 1
    assert _defaults() == before
    at = open_page("pages/confusion.py")
    box = at.sidebar.multiselect(key="confusion_runs")
    assert str(run_dir) not in box.value
    assert "baseline s0 (16px) [cancelled]" in box.options, box.options
    assert any("did not finish" in c.value for c in at.sidebar.caption)


# --------------------------------------------------------------------------------------------
# From a thumbnail to the Attributions page: links by query parameters
# --------------------------------------------------------------------------------------------


def _attributions(query: dict) -> AppTest:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=180)
    for k, v in query.items():
        at.query_params[k] = v
    at.run()
    at.switch_page("pages/attributions.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.mark.slow
def test_a_thumbnail_link_opens_attributions_on_that_training_image(two_backbones, env):
    """A HEAD+METHOD run's folder (csba+ldam_drw-s0) survives the link's percent-encoding; the
    page chooses that run and that training image."""
    from urllib.parse import parse_qs, urlsplit

    root = env(two_backbones)
    run = next(p for p in _runs(root) if p.endswith("/csba+ldam_drw-s0"))
    from csba.store import RunInfo, read_run_json
    from pages.common import attribution_link

    link = attribution_link(RunInfo(Path(run), read_run_json(run)), "train", 3)
    assert "csba%2Bldam_drw-s0" in link and link.startswith("attributions?")
    query = {k: v[0] for k, v in parse_qs(urlsplit(link).query).items()}
    assert query["run"].endswith("/csba+ldam_drw-s0") and query["split"] == "train"
    at = _attributions(query)
    assert at.sidebar.multiselect(key="attributions_runs").value == [run]
    assert at.radio(key="attr_source").value == "Linked image"
    from csba.runs import load_run_and_data

    _, bundle = load_run_and_data(run)
    true = bundle.classes[int(bundle.train.labels[3])]  # training image 3, not a test image
    text = " ".join(m.value for m in at.markdown)
    assert f"(true: {true})" in text, text
    assert not at.error, [e.value for e in at.error]


@pytest.mark.parametrize(
    "query",
    [
        {"run": "../../../etc/passwd", "split": "train", "index": "0"},
        {"run": "imagefolder-32px/../../x", "split": "train", "index": "0"},
        {"run": "/etc", "split": "test", "index": "0"},
        {"run": "imagefolder-32px/baseline-s0", "split": "secret", "index": "0"},
        {"run": "imagefolder-32px/baseline-s0", "split": "train", "index": "-1"},
        {"run": "imagefolder-32px/baseline-s0", "split": "train", "index": "99999"},
        {"run": "imagefolder-32px/baseline-s0", "split": "train", "index": "<b>1</b>"},
    ],
)
def test_a_bad_link_is_ignored_with_a_notice(two_backbones, env, query):
    env(two_backbones)
    at = _attributions(query)
    notes = [i.value for i in at.info]
    assert any(
        n.startswith(("The link was ignored", "The link's image was ignored")) for n in notes
    )
    assert not at.error, [e.value for e in at.error]
    assert "attr_link_applied" not in at.session_state or query["index"] == "99999"
