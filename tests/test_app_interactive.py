"""AppTest of the Attributions and Training pages against the tiny runs (no browser)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from conftest import settle_attributions
from streamlit.testing.v1 import AppTest

NUMBERS = "Probabilities, branch logits and attention"  # the Attributions chart

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "app.py")


@pytest.fixture
def runs_root(tiny_runs, tiny_folder, tmp_path, monkeypatch):
    """A private copy of the tiny runs (the Training page adds runs to it)."""
    root = tmp_path / "runs"
    shutil.copytree(tiny_runs["baseline"].parent.parent, root)
    monkeypatch.setenv("CSBA_RUNS_ROOT", str(root))
    monkeypatch.setenv("CSBA_DATA_ROOT", str(tiny_folder.parent))
    monkeypatch.chdir(REPO)
    monkeypatch.syspath_prepend(str(REPO))
    return root


def _page(path: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    at.switch_page(path)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _texts(at: AppTest) -> str:
    parts = [*at.markdown, *at.caption, *at.success, *at.error, *at.warning, *at.info]
    return "\n".join(str(p.value) for p in parts)


def _choose_runs(at: AppTest, variants: list[str]) -> None:
    box = at.sidebar.multiselect(key="attributions_runs")
    wanted = [o for o in box.options if o.split(" ")[0] in variants]
    paths = [p for p in box.value if any(p.rstrip("/").endswith(f"/{v}-s0") for v in variants)]
    assert len(paths) == len(variants), (box.options, wanted)
    box.set_value(paths)
    at.run()


def _maps_then_branch_cams(at: AppTest) -> list[str]:
    """The maps each run shows, then with the per-branch Grad-CAM toggle on: every caption."""
    captions = [c for img in at.image for c in img.captions]
    for title in ("Integrated Gradients", "Saliency", "Grad-CAM (backbone output Z)"):
        assert any(title in c for c in captions), captions
    assert not any("Grad-CAM, branch" in c for c in captions)  # behind the toggle
    maps = len(captions)
    at.toggle(key="attr_branch_cams").set_value(True)
    at.run()
    settle_attributions(at)
    captions = [c for img in at.image for c in img.captions]
    assert any("Grad-CAM, branch 1" in c for c in captions), captions
    assert len(captions) > maps
    return captions


def test_attributions_page_test_image(runs_root):
    at = _page("pages/attributions.py")
    _choose_runs(at, ["baseline", "csba", "class_heads"])
    settle_attributions(at)
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    subheaders = [s.value for s in at.subheader]
    assert subheaders == ["Input", NUMBERS, "Each run"]
    assert at.get("plotly_chart") == []  # the numbers as one picture by default
    assert not at.toggle(key="attr_interactive").value
    at.toggle(key="attr_interactive").set_value(True)
    at.run()
    settle_attributions(at)
    charts = at.get("plotly_chart")
    assert len(charts) == 1  # every run's numbers in one figure
    grid = json.loads(charts[0].proto.spec)
    assert [t["type"] for t in grid["data"]].count("bar") == 3  # one column per run
    captions = _maps_then_branch_cams(at)
    assert any("head of" in c for c in captions)  # class_heads: the explained class's head
    assert any("as the model sees it: 32x32" in c for c in captions)
    # another test image and an explicit target still render without error
    at.number_input(key="attr_idx_any").set_value(3)
    at.selectbox(key="attr_target").set_value("beta")
    at.run()
    settle_attributions(at)
    assert not at.exception and not at.error
    assert "Explaining **beta**" in _texts(at)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("garbage.png", b"this is not an image at all", "is not an image file we can read"),
        ("empty.png", b"", "is empty"),
        ("cut.png", None, "damaged or truncated"),
    ],
)
def test_attributions_page_bad_upload(runs_root, tiny_folder, name, content, message):
    if content is None:
        content = (tiny_folder / "alpha" / "000.png").read_bytes()[:60]
    at = _page("pages/attributions.py")
    _choose_runs(at, ["baseline"])
    at.radio(key="attr_source").set_value("Upload")
    at.run()
    assert "up to" in at.file_uploader(key="attr_upload").label
    at.file_uploader(key="attr_upload").upload(name, content, "image/png")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and message in errors[0], errors
    assert [s.value for s in at.subheader] == []  # nothing else rendered, nothing broke


def test_attributions_page_good_upload(runs_root, tiny_folder):
    at = _page("pages/attributions.py")
    _choose_runs(at, ["csba"])
    at.radio(key="attr_source").set_value("Upload")
    at.run()
    png = (tiny_folder / "gamma" / "001.png").read_bytes()
    at.file_uploader(key="attr_upload").upload("cell.png", png, "image/png")
    at.run()
    settle_attributions(at)
    assert not at.exception and not at.error
    assert [s.value for s in at.subheader] == ["Input", NUMBERS, "Each run"]


def test_training_page_runs_a_job(runs_root, tiny_folder):
    at = _page("pages/training.py")
    assert "Device" in _texts(at) or at.radio(key="train_device")
    at.selectbox(key="train_dataset").set_value("imagefolder")
    at.run()
    at.text_input(key="train_root_imagefolder").set_value("/etc")
    at.multiselect(key="train_variants").set_value(["baseline"])
    at.number_input(key="train_epochs").set_value(1)
    at.number_input(key="train_size").set_value(32)
    at.button(key="train_start").click()
    at.run()
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "outside the allowed folder" in errors[0], errors

    at.text_input(key="train_root_imagefolder").set_value(tiny_folder.name)  # relative to root
    at.number_input(key="train_seed").set_value(7)
    at.selectbox(key="train_schedule").set_value("cosine")
    at.selectbox(key="train_keep").set_value("last")
    at.button(key="train_start").click()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        done = [s.value for s in at.success if "baseline s7" in s.value]
        if done:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"the job did not finish: {_texts(at)}")
    run_dir = runs_root / "imagefolder-32px" / "baseline-s7"
    assert (run_dir / "run.json").is_file()
    assert str(run_dir) in done[0]
    assert not at.error
    config = json.loads((run_dir / "run.json").read_text())["config"]
    assert (config["lr_schedule"], config["keep"]) == ("cosine", "last")


@pytest.mark.slow
def test_training_page_trains_a_head_with_a_method(runs_root, tiny_folder):
    """Heads x methods beyond the presets: every chosen pair, a pair equal to a preset under
    the preset's name; one side without the other is refused in one line."""
    at = _page("pages/training.py")
    at.selectbox(key="train_dataset").set_value("imagefolder")
    at.run()
    at.text_input(key="train_root_imagefolder").set_value(str(tiny_folder))
    at.multiselect(key="train_variants").set_value([])
    at.multiselect(key="train_heads").set_value(["csba"])
    at.button(key="train_start").click()
    at.run()
    errors = [e.value for e in at.error]
    assert errors == ["choose at least one head and one method to combine (or neither)"], errors
    at.multiselect(key="train_methods").set_value(["ldam_drw", "weighted"])
    at.number_input(key="train_epochs").set_value(1)
    at.number_input(key="train_size").set_value(16)
    at.run()
    assert "Trains **csba+ldam_drw**, **csba**" in [c.value for c in at.caption]
    at.button(key="train_start").click()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    folder = runs_root / "imagefolder-16px"
    deadline = time.monotonic() + 180

    def done() -> bool:  # both trained and diagnosed: the job's thread has nothing left
        text = " ".join(s.value for s in at.success)
        return "csba+ldam_drw s0" in text and "csba s0" in text

    while not done():
        assert time.monotonic() < deadline, _texts(at)
        time.sleep(0.5)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
    meta = json.loads((folder / "csba+ldam_drw-s0" / "run.json").read_text())
    assert meta["composition"]["head"] == "csba" and meta["composition"]["method"] == "ldam_drw"
    assert meta["method"]["scale"] == 30.0


@pytest.mark.slow
def test_training_page_trains_on_a_timm_backbone_found_by_name(runs_root, tiny_folder):
    from pages.training import TIMM

    at = _page("pages/training.py")
    at.selectbox(key="train_dataset").set_value("imagefolder")
    at.run()
    at.text_input(key="train_root_imagefolder").set_value(str(tiny_folder))
    at.multiselect(key="train_variants").set_value(["csba"])
    at.number_input(key="train_epochs").set_value(1)
    at.number_input(key="train_size").set_value(32)
    at.selectbox(key="train_backbone").set_value(TIMM)
    at.run()
    assert "No timm model picked yet: trifire until one is." in [c.value for c in at.caption]
    at.text_input(key="train_timm_q").set_value("mobilenetv3_small_05")
    at.run()
    assert at.selectbox(key="train_timm").options[0] == "timm:mobilenetv3_small_050"
    at.button(key="train_start").click()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    run_dir = runs_root / "imagefolder-32px" / "csba-timm-mobilenetv3_small_050-s0"
    deadline = time.monotonic() + 240
    # the job's own success line (it names the folder; earlier tests' jobs show theirs too),
    # shown once the job's thread is done, so the next test starts with no job running
    while not any(str(run_dir) in s.value for s in at.success):
        assert time.monotonic() < deadline, _texts(at)
        time.sleep(0.5)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["backbone"]["name"] == "timm:mobilenetv3_small_050"
    assert meta["backbone"]["stages"] == ["bn1", "blocks.0", "blocks.1", "blocks.3", "blocks.5"]


def test_training_page_cancel_and_failure(runs_root, tiny_folder):
    at = _page("pages/training.py")
    at.selectbox(key="train_dataset").set_value("imagefolder")
    at.run()
    at.text_input(key="train_root_imagefolder").set_value(str(tiny_folder))
    at.multiselect(key="train_variants").set_value(["baseline"])
    at.number_input(key="train_epochs").set_value(200)
    at.number_input(key="train_size").set_value(32)
    at.number_input(key="train_batch").set_value(4)
    at.number_input(key="train_seed").set_value(11)
    at.button(key="train_start").click()
    at.run()
    cancel = [b for b in at.button if str(b.key).startswith("cancel_")]
    deadline = time.monotonic() + 60
    while not cancel or not at.get("progress"):
        assert time.monotonic() < deadline, _texts(at)
        time.sleep(0.3)
        at.run()
        cancel = [b for b in at.button if str(b.key).startswith("cancel_")]
    assert "Running job-" in _texts(at)
    cancel[-1].click()
    at.run()
    deadline = time.monotonic() + 60
    while "cancelled" not in " ".join(w.value for w in at.warning):
        assert time.monotonic() < deadline, _texts(at)
        time.sleep(0.3)
        at.run()
    assert not at.exception

    # A dataset that cannot be read: the failure is one line plus a details expander.
    bad = tiny_folder.parent / "not-a-dataset"
    bad.mkdir(exist_ok=True)
    at.text_input(key="train_root_imagefolder").set_value(str(bad))
    at.number_input(key="train_epochs").set_value(1)
    at.button(key="train_start").click()
    at.run()
    deadline = time.monotonic() + 60
    while not at.error:
        assert time.monotonic() < deadline, _texts(at)
        time.sleep(0.3)
        at.run()
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "needs at least two class folders" in errors[0], errors
    assert any(x.label.startswith("Details") for x in at.expander)
    assert not at.exception


def test_attributions_page_does_not_wait_for_the_computations(runs_root, monkeypatch):
    """With the worker held, the page still returns: each run says where its computation stands;
    once the worker goes on, the next rerun shows the maps (quick ones and IG) and no status."""
    import threading

    import csba.attributions

    gate = threading.Event()
    real = csba.attributions.explain_image

    def held(*args, **kwargs):
        gate.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(csba.attributions, "explain_image", held)
    monkeypatch.setenv("CSBA_ATTRIBUTION_WAIT_S", "0")
    at = _page("pages/attributions.py")
    _choose_runs(at, ["baseline", "csba"])  # this rerun returned although nothing could finish
    assert not at.exception and not at.error, [e.value for e in at.exception]
    infos = [str(i.value) for i in at.info]
    # (the worker may still hold an earlier test's work: then both runs are queued)
    assert len(infos) == 2 and all(i.startswith("Prediction and maps: ") for i in infos), infos
    assert any("queued" in i and "ahead" in i for i in infos), infos
    assert not any("Integrated Gradients" in c for img in at.image for c in img.captions)
    gate.set()
    monkeypatch.setenv("CSBA_ATTRIBUTION_WAIT_S", "60")
    at.run()
    settle_attributions(at)  # the script waits for the first run's maps only
    assert not at.exception and not at.error
    assert not [i.value for i in at.info]
    _maps_then_branch_cams(at)
    assert "computing" not in _texts(at)


def test_attributions_first_run_complete_before_the_others_quick_maps(runs_root, monkeypatch):
    """Queue order (one user): the first run's quick maps, then its Integrated Gradients, then
    the other runs' quick maps, and their IG last; the first answer waits for the first run."""
    import threading

    import csba.attributions

    calls, lock = [], threading.Lock()
    real = csba.attributions.explain_image

    def recorded(model, meta, image, target=None, methods=None, **kwargs):
        with lock:
            calls.append((id(model), tuple(methods)))
        return real(model, meta, image, target, methods=methods, **kwargs)

    monkeypatch.setattr(csba.attributions, "explain_image", recorded)
    monkeypatch.setenv("CSBA_ATTRIBUTION_WAIT_S", "60")
    at = _page("pages/attributions.py")
    assert not at.exception and not at.error
    first = calls[0][0]
    assert calls[0] == (first, ("saliency", "gradcam"))
    assert calls[1] == (first, ("integrated_gradients",)), calls[:3]
    # the first answer came after the first run's maps: its IG caption is on the page
    assert any(c == "Integrated Gradients" for img in at.image for c in img.captions)
    n = len(at.sidebar.multiselect(key="attributions_runs").value)
    deadline = time.monotonic() + 120
    while len(calls) < 2 * n and time.monotonic() < deadline:
        time.sleep(0.2)
    runs = list(dict.fromkeys(m for m, _ in calls))
    assert n >= 2 and len(runs) == n and len(calls) == 2 * n, calls
    order = [m for m, meth in calls[2:] if meth == ("saliency", "gradcam")]
    assert order == runs[1:], "the other runs' quick maps, in run order, before any of their IG"
    assert all(meth == ("integrated_gradients",) for _, meth in calls[2 + len(order) :])
