"""csba.typicality: the out-of-distribution score, its files, and the shipped runs' references.

* known answers on synthetic features (class means at known points, known variances);
* save/load round trip; missing and corrupt files give one-line errors;
* diagnose writes the reference; ensure_typicality backfills a run folder;
* acceptance on the shipped ELPV runs: both scikit-learn photographs are flagged by every run,
  at most 5% of the ELPV test images are (about 10 s per run on 2 cores);
* the Attributions page warns about an uploaded photograph.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from csba.store import list_runs, load_run
from csba.typicality import (
    CUT_PERCENTILE,
    JSON_FILE,
    TENSOR_FILE,
    TypicalityError,
    ensure_typicality,
    fit_typicality,
    load_typicality,
    save_typicality,
    score_image,
)

REPO = Path(__file__).resolve().parents[1]
# runs shipped with weights (experiment records, run.json only, have no typicality reference)
SHIPPED = [
    i
    for i in list_runs(REPO / "checkpoints")
    if i.meta is not None and (i.path / "model.safetensors").is_file()
]
PHOTOS = ("china.jpg", "flower.jpg")


def _synthetic(seed: int = 0, d: int = 4):
    """Two classes at +-3 on axis 0, channel standard deviations (1, 2, 0.5, 1)."""
    rng = np.random.default_rng(seed)
    sd = np.array([1.0, 2.0, 0.5, 1.0])[:d]
    means = np.zeros((2, d))
    means[0, 0], means[1, 0] = 3.0, -3.0
    y = np.repeat([0, 1], 2000)
    train = means[y] + rng.normal(size=(len(y), d)) * sd
    val = means[rng.integers(0, 2, 1000)] + rng.normal(size=(1000, d)) * sd
    return train, y, val, means, sd


def test_known_answer_on_synthetic_features():
    train, y, val, means, sd = _synthetic()
    t = fit_typicality(train, y, val)
    np.testing.assert_allclose(t.class_means, means, atol=0.1)
    np.testing.assert_allclose(t.variance, sd**2, rtol=0.1)
    # at a class mean: score 0, the lowest possible; percentile 0
    at_mean = t.score(t.class_means)
    np.testing.assert_allclose(at_mean, 0.0, atol=1e-12)
    assert t.percentile(0.0) == 0.0
    # one sd away on every channel from class 1's mean: RMS z-score 1
    np.testing.assert_allclose(t.score(t.class_means[1] + np.sqrt(t.variance)), [1.0])
    # the nearest class counts: a point 2 sd from class 0 scores 2, not its distance to class 1
    p = t.class_means[0].copy()
    p[1] += 2 * np.sqrt(t.variance[1]) * 2  # 4 sd on one of 4 channels: sqrt(16 / 4) = 2
    np.testing.assert_allclose(t.score(p), [2.0])
    # the cut is the 99th percentile of the validation scores
    val_scores = t.score(val)
    assert t.cut == pytest.approx(np.percentile(val_scores, CUT_PERCENTILE))
    assert np.mean(val_scores > t.cut) == pytest.approx(0.01, abs=0.002)
    assert t.percentile(t.cut) == pytest.approx(CUT_PERCENTILE, abs=0.6)
    # a far point (between the classes, 10 sd off on channel 3) is outside
    far = np.zeros(4)
    far[3] = 10.0
    assert t.score(far)[0] > t.cut and t.percentile(t.score(far)[0]) == 100.0


def test_fit_rejects_bad_input():
    train, y, val, _, _ = _synthetic()
    with pytest.raises(TypicalityError, match="validation"):
        fit_typicality(train, y, val[:0])
    with pytest.raises(TypicalityError, match="labels"):
        fit_typicality(train, y[:10], val)
    with pytest.raises(TypicalityError, match="NaN"):
        fit_typicality(np.full_like(train, np.nan), y, val)
    t = fit_typicality(train, y, val)
    with pytest.raises(TypicalityError, match=r"\(N, 4\)"):
        t.score(np.zeros((2, 5)))


def test_round_trip_and_small_file(tmp_path):
    train, y, val, _, _ = _synthetic()
    t = fit_typicality(train, y, val, classes=["a", "b"])
    save_typicality(tmp_path, t)
    info = json.loads((tmp_path / JSON_FILE).read_text())
    assert info["cut_percentile"] == 99.0 and info["feature_dim"] == 4
    assert info["n_train"] == 4000 and info["n_val"] == 1000 and info["classes"] == ["a", "b"]
    u = load_typicality(tmp_path)
    np.testing.assert_allclose(u.class_means, t.class_means, rtol=1e-6)
    np.testing.assert_allclose(u.score(val), t.score(val), rtol=1e-5)
    assert u.cut == t.cut and u.classes == ["a", "b"]
    # a run-sized reference (4 classes x 768 channels) stays far below 200 KB
    big = fit_typicality(np.random.default_rng(1).normal(size=(100, 768)), np.arange(100) % 4,
                         np.random.default_rng(2).normal(size=(30, 768)))  # fmt: skip
    save_typicality(tmp_path, big)
    assert (tmp_path / TENSOR_FILE).stat().st_size + (tmp_path / JSON_FILE).stat().st_size < 200e3


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(TypicalityError, match="has no typicality reference") as e:
        load_typicality(tmp_path)
    assert "\n" not in str(e.value)
    train, y, val, _, _ = _synthetic()
    save_typicality(tmp_path, fit_typicality(train, y, val))
    good = (tmp_path / TENSOR_FILE).read_bytes()
    (tmp_path / TENSOR_FILE).write_bytes(good[:40])
    with pytest.raises(TypicalityError, match="unreadable typicality file") as e:
        load_typicality(tmp_path)
    assert "\n" not in str(e.value)
    (tmp_path / TENSOR_FILE).write_bytes(good)
    (tmp_path / JSON_FILE).write_text("{broken")
    with pytest.raises(TypicalityError, match="unreadable"):
        load_typicality(tmp_path)
    save_typicality(tmp_path, fit_typicality(train, y, val))
    info = json.loads((tmp_path / JSON_FILE).read_text())
    (tmp_path / JSON_FILE).write_text(json.dumps({**info, "version": 99}))
    with pytest.raises(TypicalityError, match="version 99"):
        load_typicality(tmp_path)
    (tmp_path / JSON_FILE).write_text(json.dumps({**info, "feature_dim": 3}))
    with pytest.raises(TypicalityError, match="inconsistent"):
        load_typicality(tmp_path)


def test_diagnose_writes_and_ensure_backfills(tiny_runs, tiny_folder, tmp_path):
    from csba.diagnostics.run import diagnose_run

    run_dir = tmp_path / "csba-s0"
    shutil.copytree(tiny_runs["csba"], run_dir)
    assert not (run_dir / JSON_FILE).exists()
    diagnose_run(str(run_dir), data_root=str(tiny_folder), per_class=2, device="cpu")
    t = load_typicality(run_dir)
    assert t.n_val > 0 and t.feature_dim == 768 and t.class_means.shape == (3, 768)
    # ensure_typicality: present -> untouched; removed -> rebuilt, the same numbers
    stamp = (run_dir / JSON_FILE).stat().st_mtime_ns
    ensure_typicality(run_dir, data_root=str(tiny_folder))
    assert (run_dir / JSON_FILE).stat().st_mtime_ns == stamp
    (run_dir / TENSOR_FILE).unlink()
    ensure_typicality(run_dir, data_root=str(tiny_folder))
    np.testing.assert_allclose(load_typicality(run_dir).class_means, t.class_means, rtol=1e-5)
    # score_image on a tensor and on a PIL image agree; a wrong shape is a clear error
    run = load_run(run_dir)
    pil = Image.fromarray(np.full((40, 40, 3), 90, np.uint8))
    from csba.attributions import prepare_image

    a = score_image(run, pil)
    b = score_image(run, prepare_image(pil, run.meta["dataset"]).x)
    assert a.score == pytest.approx(b.score) and 0 <= a.percentile <= 100
    assert a.outside == (a.score > a.cut) and "\n" not in a.message
    with pytest.raises(TypicalityError, match="one image"):
        score_image(run, prepare_image(pil, run.meta["dataset"]).x.repeat(2, 1, 1, 1))
    (run_dir / JSON_FILE).unlink()
    with pytest.raises(TypicalityError, match=r"python -m csba\.typicality"):
        score_image(run, pil)


# ---- the shipped runs ------------------------------------------------------------------------


def _photo(name: str) -> Image.Image:
    from sklearn.datasets import load_sample_image

    return Image.fromarray(load_sample_image(name))


@pytest.fixture(scope="module")
def elpv_test():
    """ELPV test split by (image size, split seed), decoded once."""
    from csba.data import load_dataset

    cache = {}

    def get(meta):
        ds = meta["dataset"]
        key = (int(ds["image_size"]), int(ds["split_seed"]))
        if key not in cache:
            cache[key] = load_dataset("elpv", key[0], split_seed=key[1])
        return cache[key]

    return get


ELPV = [i for i in SHIPPED if i.meta["dataset"]["name"] == "elpv"]


@pytest.mark.slow
@pytest.mark.skipif(not ELPV, reason="no ELPV runs shipped")
@pytest.mark.parametrize("info", ELPV, ids=[i.path.name for i in ELPV])
def test_shipped_run_flags_photographs_not_elpv_test_images(info, elpv_test):
    from csba.typicality import _split_features

    run = load_run(info.path)
    t = load_typicality(info.path)
    assert t.n_train == sum(info.meta["dataset"]["counts"]["train"])
    size = sum(f.stat().st_size for f in info.path.glob("typicality.*"))
    assert size < 200e3, size
    for name in PHOTOS:
        r = score_image(run, _photo(name), typicality=t)
        assert r.outside, (info.path.name, name, r.score, r.cut)
        assert "outside what run" in r.message and info.path.name in r.message
    bundle = elpv_test(info.meta)
    flagged = float(np.mean(t.score(_split_features(run.model, bundle.test, bundle.mean,
                                                    bundle.std)) > t.cut))  # fmt: skip
    assert flagged <= 0.05, (info.path.name, flagged)


def test_shipped_runs_all_have_a_reference():
    missing = [str(i.path) for i in SHIPPED if not (i.path / JSON_FILE).is_file()]
    assert not missing, missing


# ---- the Attributions page -------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not ELPV, reason="no ELPV runs shipped")
def test_attributions_page_warns_about_a_photograph(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    src = next(i.path for i in ELPV if i.path.name == "baseline-s0")
    root = tmp_path / "runs" / "elpv"
    shutil.copytree(src, root / "baseline-s0")
    shutil.copytree(src, root / "baseline-s1", ignore=shutil.ignore_patterns("typicality.*"))
    monkeypatch.setenv("CSBA_RUNS_ROOT", str(tmp_path / "runs"))
    monkeypatch.chdir(REPO)
    monkeypatch.syspath_prepend(str(REPO))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=300)
    at.run()
    at.switch_page("pages/attributions.py")
    at.run()
    box = at.sidebar.multiselect(key="attributions_runs")
    box.set_value([str(root / "baseline-s0"), str(root / "baseline-s1")])
    at.run()
    at.radio(key="attr_source").set_value("Upload")
    at.run()
    import io

    buf = io.BytesIO()
    _photo("china.jpg").save(buf, format="PNG")
    at.file_uploader(key="attr_upload").upload("china.png", buf.getvalue(), "image/png")
    at.run()
    from conftest import settle_attributions

    settle_attributions(at)
    assert not at.exception, [e.value for e in at.exception]
    warnings = [str(w.value) for w in at.warning]
    assert any(
        "outside what run baseline-s0 was trained on" in w and "not meaningful" in w
        for w in warnings
    ), warnings
    captions = "\n".join(str(c.value) for c in at.caption)
    assert "typicality: not available" in captions and "baseline-s1" in captions
