"""Per-example scores (csba.diagnostics.examples): against a plain loop (each image alone, one
backward each) on a small real network, a two-class linear model worked by hand, and the file
round trip."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from csba.diagnostics.examples import example_scores, load_scores, save_scores
from csba.diagnostics.gcm import gradient_conflict_matrix
from csba.models import create_model


def _plain(model, x, y, S, counts, inside):
    """The definition, one image at a time: its own backward, then cosines in float64."""
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    S = S.double()
    out = []
    for i in range(len(y)):
        loss = F.cross_entropy(model(x[i : i + 1]).float(), y[i : i + 1], reduction="sum")
        g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, params)]).double()
        cos = []
        for a in range(S.shape[0]):
            m = S[a] - g if (inside[i] and a == int(y[i])) else S[a]
            if inside[i] and a == int(y[i]) and counts[a] == 1:
                cos.append(math.nan)
                continue
            cos.append(float(g @ m / (g.norm() * m.norm())))
        with torch.no_grad():
            p = torch.softmax(model(x[i : i + 1]).float(), 1)[0, y[i]]
        out.append((cos, float(g @ g), float(p)))
    return out


@pytest.mark.parametrize("variant", ["csba", "class_heads+ldam_drw"])
def test_scores_match_a_plain_per_example_loop(variant):
    torch.manual_seed(0)
    model = create_model(variant, 3).eval()
    x = torch.randn(10, 3, 16, 16)
    y = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
    gcm = gradient_conflict_matrix(model, x[:7], y[:7], 3, keep_sums=True, batch_size=4)
    # images 0-6 are in the GCM's sum (class 2 has none there: its sum is zero, NaN cosines)
    inside = [True] * 7 + [False] * 3
    S, counts = gcm.sums, gcm.counts
    got = example_scores(model, [(x[:6], y[:6]), (x[6:], y[6:])], S, counts, inside, chunk=4)
    want = _plain(model, x, y, S, counts, inside)
    assert list(got.rule) == [1] * 7 + [0] * 3
    for i, (cos, sq, p) in enumerate(want):
        np.testing.assert_allclose(got.alignment[i], cos, atol=1e-5, equal_nan=True)
        assert got.self_influence[i] == pytest.approx(sq, rel=1e-4)
        assert got.confidence[i] == pytest.approx(p, abs=1e-6)
    with torch.no_grad():
        np.testing.assert_array_equal(got.prediction, model(x).argmax(1).numpy())
    assert np.isnan(got.alignment[:, 2]).all()  # class 2 had no image in the sum
    np.testing.assert_array_equal(got.own_alignment, got.alignment[np.arange(10), y.numpy()])


def test_two_class_linear_model_worked_by_hand():
    """logits = W x + b with W = [[1, 0], [0, 1]], b = 0. For x with label y the CE gradient is
    (p - e_y) x^T for W and p - e_y for b, p = softmax(W x)."""
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
        model.bias.zero_()
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [2.0, 1.0]])
    y = torch.tensor([0, 1, 0])

    def grad(xi, yi):
        z = xi.numpy().astype(np.float64)
        p = np.exp(z) / np.exp(z).sum()
        d = p - np.eye(2)[yi]
        return np.concatenate([np.outer(d, z).ravel(), d])  # W row-major, then b

    g = [grad(x[i], int(y[i])) for i in range(3)]
    S = np.stack([g[0] + g[2], g[1]])  # class sums over all three images
    counts = np.array([2, 1])

    def cos(u, v):
        return float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))

    got = example_scores(
        model, [(x, y)], torch.tensor(S, dtype=torch.float32), counts, [True, True, True]
    )
    # image 0: own class leave-one-out = g2; class 1 = S_1 = g1
    assert got.alignment[0, 0] == pytest.approx(cos(g[0], g[2]), abs=1e-6)
    assert got.alignment[0, 1] == pytest.approx(cos(g[0], g[1]), abs=1e-6)
    assert math.isnan(got.alignment[1, 1])  # class 1 has one image: no mean without it
    assert got.alignment[1, 0] == pytest.approx(cos(g[1], S[0]), abs=1e-6)
    assert got.alignment[2, 0] == pytest.approx(cos(g[2], g[0]), abs=1e-6)
    for i in range(3):
        assert got.self_influence[i] == pytest.approx(float(g[i] @ g[i]), rel=1e-6)
    p0 = np.exp(1) / (np.exp(1) + 1)  # image 0: logits (1, 0), label 0
    assert got.confidence[0] == pytest.approx(p0, abs=1e-6)


def test_scores_round_trip_through_their_file(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    S = torch.randn(3, 15)
    s = example_scores(model, [(x, y)], S, np.array([2, 2, 2]), None)
    assert not s.rule.any()
    save_scores(tmp_path, {"train": s}, {"classes": ["a", "b", "c"]})
    back = load_scores(tmp_path, "train")
    for name in ("alignment", "self_influence", "confidence", "labels", "rule", "prediction"):
        np.testing.assert_array_equal(getattr(back, name), getattr(s, name))
    assert load_scores(tmp_path, "test") is None and load_scores(tmp_path / "x", "train") is None


def test_diagnose_writes_scores_and_scores_only_touches_nothing_else(tiny_folder, tmp_path):
    """diagnose stores every training and test image's scores against the matrix it stored;
    --no-scores skips them; --scores-only rebuilds the same file from the stored diagnosis,
    leaving run.json, the weights and the typicality files byte-identical."""
    from csba.cli import main
    from csba.data import load_dataset
    from csba.train import TrainConfig, train

    cfg = TrainConfig(
        dataset="imagefolder",
        data_root=str(tiny_folder),
        variant="csba",
        image_size=16,
        epochs=1,
        batch_size=16,
        out=str(tmp_path),
    )
    run = train(cfg)["run_dir"]
    assert main(["diagnose", run, "--no-scores", "--per-class", "5"]) == 0
    assert load_scores(run, "train") is None
    assert main(["diagnose", run, "--per-class", "5"]) == 0
    train_s, test_s = load_scores(run, "train"), load_scores(run, "test")
    bundle = load_dataset("imagefolder", 16, data_root=str(tiny_folder))
    assert len(train_s.labels) == len(bundle.train) and len(test_s.labels) == len(bundle.test)
    np.testing.assert_array_equal(train_s.labels, bundle.train.labels.numpy())
    assert train_s.rule.sum() == 5 * 3 and not test_s.rule.any()  # the subset: 5 per class
    assert np.isfinite(train_s.self_influence).all() and (train_s.confidence <= 1).all()
    files = {p.name: p.read_bytes() for p in Path(run).iterdir() if p.is_file()}
    first = files.pop("example_scores.safetensors")
    (Path(run) / "example_scores.safetensors").unlink()
    assert main(["diagnose", run, "--scores-only"]) == 0
    after = {p.name: p.read_bytes() for p in Path(run).iterdir() if p.is_file()}
    again = after.pop("example_scores.safetensors")
    assert after == files  # nothing else written
    a, b = load_scores(run, "train"), train_s
    np.testing.assert_allclose(a.alignment, b.alignment, atol=1e-6, equal_nan=True)
    np.testing.assert_array_equal(a.rule, b.rule)
    assert len(again) == len(first)
    # a stored matrix the weights no longer give (moved by 0.05): refused in one line, and
    # the scores file left as it was
    meta = json.loads((Path(run) / "run.json").read_text())
    meta["diagnostics"]["gcm"]["matrix"][0][1] += 0.05
    (Path(run) / "run.json").write_text(json.dumps(meta))
    assert main(["diagnose", run, "--scores-only"]) == 2
    assert (Path(run) / "example_scores.safetensors").read_bytes() == again


def test_label_noise_moves_training_labels_only_and_is_rebuilt(tiny_folder, tmp_path):
    from csba.data import load_dataset
    from csba.noise import flip_labels
    from csba.runs import load_run_and_data
    from csba.train import TrainConfig, train

    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    rec = flip_labels(labels, 0.05, 3, 3)
    assert len(rec["flipped"]) == 5 and rec == flip_labels(labels, 0.05, 3, 3)  # seeded
    assert all(a != b for a, b in zip(rec["from"], rec["to"], strict=True))  # another class
    assert rec["from"] == labels[rec["flipped"]].tolist()
    cfg = TrainConfig(
        dataset="imagefolder",
        data_root=str(tiny_folder),
        variant="baseline",
        image_size=16,
        epochs=1,
        batch_size=16,
        out=str(tmp_path),
        label_noise=0.1,
        label_noise_seed=1,
    )
    meta = train(cfg)
    assert Path(meta["run_dir"]).name == "baseline-noise0.1n1-s0"  # never a clean run's folder
    noise = meta["dataset"]["label_noise"]
    clean = load_dataset("imagefolder", 16, data_root=str(tiny_folder))
    assert len(noise["flipped"]) == round(0.1 * len(clean.train))
    _, bundle = load_run_and_data(meta["run_dir"])
    moved = bundle.train.labels.numpy()
    assert (moved[noise["flipped"]] == noise["to"]).all()
    keep = np.setdiff1d(np.arange(len(moved)), noise["flipped"])
    np.testing.assert_array_equal(moved[keep], clean.train.labels.numpy()[keep])
    for split in ("val", "test"):  # clean
        assert torch.equal(bundle.split(split).labels, clean.split(split).labels)
    from csba.identity import identity

    protocol = dict(identity(meta).protocol)
    assert (protocol["label_noise"], protocol["label_noise_seed"]) == ("0.1", "1")
