"""AppTest of the Attributions page's per-branch Grad-CAM toggle (no browser, tiny 32 px runs)."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
from conftest import settle_attributions
from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "app.py")
TOGGLE = "attr_branch_cams"
NOTE = "No per-branch Grad-CAM for "


@pytest.fixture
def runs_of(tiny_runs, tiny_folder, tmp_path, monkeypatch):
    """A runs root holding copies of only the given variants' tiny runs (the page's default
    choice is one run per variant: those)."""
    monkeypatch.setenv("CSBA_DATA_ROOT", str(tiny_folder.parent))
    monkeypatch.chdir(REPO)
    monkeypatch.syspath_prepend(str(REPO))

    def make(*variants: str) -> Path:
        root = tmp_path / "runs"
        for v in variants:
            run = tiny_runs[v]
            shutil.copytree(run, root / run.parent.name / run.name)
        monkeypatch.setenv("CSBA_RUNS_ROOT", str(root))
        return root

    return make


def _attributions_page() -> AppTest:
    """The Attributions page with its default choice of runs, settled."""
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    at.switch_page("pages/attributions.py")
    at.run()
    settle_attributions(at)
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def _captions(at: AppTest) -> list[str]:
    return [c for img in at.image for c in img.captions]


def _notes(at: AppTest) -> list[str]:
    return [str(c.value) for c in at.caption if str(c.value).startswith(NOTE)]


def test_branch_cams_toggle_survives_computing_maps(runs_of, monkeypatch):
    """The toggle stays on when another class and image are chosen, although the maps of the
    first rerun after the change are still computing (Streamlit forgets a widget not drawn)."""
    import csba.attributions

    runs_of("csba")
    monkeypatch.setenv("CSBA_ATTRIBUTION_WAIT_S", "0")
    at = _attributions_page()
    at.toggle(key=TOGGLE).set_value(True)
    at.run()
    settle_attributions(at)
    assert any("Grad-CAM, branch 1" in c for c in _captions(at)), _captions(at)

    gate, real = threading.Event(), csba.attributions.explain_image

    def held(*args, **kwargs):
        gate.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(csba.attributions, "explain_image", held)
    try:
        at.selectbox(key="attr_class").set_value("beta")
        at.run()  # a new image: its maps cannot be ready in this run
        infos = [str(i.value) for i in at.info]
        assert any(i.startswith("Prediction and maps: ") for i in infos), infos
    finally:
        gate.set()
    at.run()
    settle_attributions(at)
    assert not at.exception and not at.error, [e.value for e in at.exception]
    assert "beta" in " ".join(_captions(at))  # the new image is shown
    assert at.toggle(key=TOGGLE).value
    assert any("Grad-CAM, branch 1" in c for c in _captions(at)), _captions(at)
    assert not _notes(at)  # every chosen run has per-branch Grad-CAM
    # a run that returns before the maps (no upload yet) does not draw the toggle either
    at.radio(key="attr_source").set_value("Upload")
    at.run()
    assert not at.toggle
    at.radio(key="attr_source").set_value("Test image")
    at.run()
    settle_attributions(at)
    assert at.toggle(key=TOGGLE).value


def test_branch_cams_note_names_runs_without_gates(runs_of):
    """With a run without attention gates chosen and the toggle on, one caption names it and
    says why it has no per-branch Grad-CAM; the gated run shows its per-branch maps."""
    runs_of("baseline", "csba")
    at = _attributions_page()
    assert not _notes(at)  # toggle off: nothing to explain
    at.toggle(key=TOGGLE).set_value(True)
    at.run()
    settle_attributions(at)
    notes = _notes(at)
    assert len(notes) == 1, notes
    named, why = notes[0].removeprefix(NOTE).split(":", 1)
    assert "baseline" in named and "csba" not in named, notes
    assert "no attention gates" in why, notes
    assert any("Grad-CAM, branch 1" in c for c in _captions(at)), _captions(at)
