"""Test-time views (csba.evaluate.predict ``views``) and stored evaluations (csba.runs)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch import nn

from csba.evaluate import predict, tta_views


class Corners(nn.Module):
    """Logits = the four corner pixels of channel 0: orientation-dependent by construction."""

    def forward(self, x):
        c = x[:, 0]
        return torch.stack([c[:, 0, 0], c[:, 0, -1], c[:, -1, 0], c[:, -1, -1]], dim=1)


def _dihedral(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 symmetries of the square, written independently of csba.evaluate."""
    out = []
    for k in range(4):
        r = torch.rot90(x, k, (2, 3))
        out += [r, r.flip(3)]
    return out


def test_views_average_the_softmax_over_the_symmetries_known_answer():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (5, 1, 6, 6), generator=g, dtype=torch.uint8)
    model = Corners()
    mean, std = [0.5], [0.25]
    x = (images.float() / 255 - 0.5) / 0.25
    want8 = torch.stack([torch.softmax(model(v), 1) for v in _dihedral(x)]).mean(0)
    got8 = predict(model, images, mean, std, views=8, batch_size=2)
    torch.testing.assert_close(torch.from_numpy(got8), want8.double(), atol=1e-6, rtol=0)
    flips = [x, x.flip(3), x.flip(2), x.flip(2).flip(3)]
    want4 = torch.stack([torch.softmax(model(v), 1) for v in flips]).mean(0)
    got4 = predict(model, images, mean, std, views=4)
    torch.testing.assert_close(torch.from_numpy(got4), want4.double(), atol=1e-6, rtol=0)
    plain = predict(model, images, mean, std)
    torch.testing.assert_close(
        torch.from_numpy(plain), torch.softmax(model(x), 1).double(), atol=1e-6, rtol=0
    )
    assert not torch.allclose(torch.from_numpy(plain), torch.from_numpy(got8))


def test_views_leave_an_invariant_model_unchanged_and_check_their_input():
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4))
    images = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    args = (model, images, [0.5] * 3, [0.2] * 3)
    torch.testing.assert_close(
        torch.from_numpy(predict(*args, views=8)), torch.from_numpy(predict(*args))
    )
    with pytest.raises(ValueError, match="views must be"):
        predict(*args, views=3)
    with pytest.raises(ValueError, match="square"):
        predict(model, torch.zeros(1, 3, 8, 6, dtype=torch.uint8), [0.5] * 3, [0.2] * 3, views=8)
    assert tta_views(True) == 8 and tta_views(False) == 4


def test_store_evaluation_and_evaluate_use_the_recorded_views(tiny_runs, tmp_path, capsys):
    from csba.cli import main
    from csba.runs import store_evaluation
    from csba.store import read_run_json

    run_dir = tmp_path / "csba-s0"
    shutil.copytree(tiny_runs["csba"], run_dir)
    before = read_run_json(run_dir)
    assert "evaluation" not in before
    test = store_evaluation(str(run_dir), 4)
    after = read_run_json(run_dir)
    assert after["evaluation"] == {"views": 4} and after["metrics"]["test"] == test
    assert after["metrics_single_view"] == before["metrics"]
    assert after["weights_sha256"] == before["weights_sha256"]
    assert after["predictions"]["test"]["y_true"] == before["predictions"]["test"]["y_true"]
    # evaluate defaults to the recorded views, and --views 1 gives the single-view metrics back
    assert main(["evaluate", str(run_dir), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["views"] == 4 and out["macro_f1"] == test["macro_f1"]
    assert out["accuracy"] == test["accuracy"]
    assert main(["evaluate", str(run_dir), "--json", "--views", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["accuracy"] == before["metrics"]["test"]["accuracy"]
    assert out["macro_f1"] == before["metrics"]["test"]["macro_f1"]
    assert after["predictions_single_view"] == before["predictions"]
    # a run converted before single-view predictions were kept gets them back, checked
    from csba.runs import ensure_single_view_predictions
    from csba.store import RunError, atomic_write_json

    meta = read_run_json(run_dir)
    del meta["predictions_single_view"]
    atomic_write_json(run_dir / "run.json", meta)
    assert ensure_single_view_predictions(str(run_dir)) is True
    restored = read_run_json(run_dir)["predictions_single_view"]["test"]
    assert restored["y_pred"] == before["predictions"]["test"]["y_pred"]
    assert ensure_single_view_predictions(str(run_dir)) is False  # nothing left to do
    meta = read_run_json(run_dir)
    del meta["predictions_single_view"]
    meta["metrics_single_view"]["test"]["accuracy"] += 0.01  # tampered: must not pass
    atomic_write_json(run_dir / "run.json", meta)
    with pytest.raises(RunError, match="do not reproduce"):
        ensure_single_view_predictions(str(run_dir))
    meta["metrics_single_view"] = before["metrics"]
    atomic_write_json(run_dir / "run.json", meta)
    # a second store keeps the original single-view metrics
    store_evaluation(str(run_dir), 2)
    again = read_run_json(run_dir)
    assert again["metrics_single_view"] == before["metrics"]
    assert again["evaluation"] == {"views": 2}
