"""Known-answer tests for csba.diagnostics (docs/design.md §4)."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from csba.diagnostics import (
    ConflictTracker,
    attention_for_image,
    attention_statistics,
    balanced_subset_indices,
    branch_gradient_shares,
    branch_shares_from_result,
    class_mean_angles,
    conflict_change,
    cosine_similarity_matrix,
    diagnose,
    generalisation_gap,
    gradient_conflict_from_batches,
    gradient_conflict_matrix,
    pairwise_angles,
    top_channel_jaccard,
)
from csba.models import create_model

IMG = 32  # tiny images keep the suite fast on CPU


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One CPU thread for these tiny models: faster, and steady when other jobs share the CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class GroupedLinear(nn.Linear):
    """A linear softmax model that also declares layer groups, like the real models."""

    def layer_groups(self) -> dict[str, list[str]]:
        return {"weight": ["weight"], "bias": ["bias"]}


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _analytic_class_grads(w, b, x, y, num_classes):
    """Per-class mean CE gradients of logits = x W^T + b: dL/dW = (p - e_y) x^T, dL/db = p - e_y.

    Returns {c: (flat weight grad, bias grad)} in float64.
    """
    p = _softmax(x @ w.T + b)  # (N, C)
    r = p - np.eye(num_classes)[y]  # (N, C) residuals
    out = {}
    for c in range(num_classes):
        m = y == c
        gw = (r[m][:, :, None] * x[m][:, None, :]).mean(axis=0)  # (C, d)
        out[c] = (gw.reshape(-1), r[m].mean(axis=0))
    return out


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _changed_bn_model(name: str, num_classes: int, seed: int = 0) -> nn.Module:
    """A model whose BatchNorm running statistics are no longer at their initial values."""
    torch.manual_seed(seed)
    model = create_model(name, num_classes)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, IMG, IMG) * 2 + 0.5)
    return model


def _loop_class_grads(model: nn.Module, x, y, num_classes):
    """Reference: one plain eval-mode autograd.grad of the mean CE per class, flattened."""
    params = [p for p in model.parameters() if p.requires_grad]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    model.eval()
    grads = []
    for c in range(num_classes):
        m = y == c
        loss = F.cross_entropy(model(x[m]), y[m])
        g = torch.autograd.grad(loss, params, allow_unused=True)
        grads.append(
            [torch.zeros_like(p) if gi is None else gi for gi, p in zip(g, params, strict=True)]
        )
    return names, grads


# ---- known answers on linear models ----------------------------------------------------------


def test_identical_gradients_give_one_and_opposite_give_minus_one():
    model = nn.Linear(4, 2, bias=False)
    nn.init.zeros_(model.weight)  # p = (1/2, 1/2): class-0 grad = [-.5, .5]^T x^T
    x = torch.tensor([[1.0, 2.0, -1.0, 0.5], [0.3, -0.2, 0.1, 1.0]])
    # class 1 on the same inputs: grad [.5, -.5]^T x^T, exactly opposite.
    opposite = gradient_conflict_matrix(
        model, torch.cat([x, x]), torch.tensor([0, 0, 1, 1]), num_classes=2
    )
    assert opposite.matrix[0, 1] == pytest.approx(-1.0, abs=1e-6)
    assert opposite.mean == pytest.approx(-1.0, abs=1e-6)
    # class 1 on negated inputs: the same gradient as class 0.
    identical = gradient_conflict_matrix(
        model, torch.cat([x, -x]), torch.tensor([0, 0, 1, 1]), num_classes=2
    )
    assert identical.matrix[0, 1] == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(np.diag(identical.matrix), [1.0, 1.0])
    np.testing.assert_allclose(identical.norms[0], identical.norms[1], rtol=1e-6)


def test_linear_softmax_matrix_matches_hand_computed_gradients():
    rng = np.random.default_rng(3)
    num_classes, d = 3, 4
    model = GroupedLinear(d, num_classes)
    with torch.no_grad():
        model.weight.copy_(torch.tensor(rng.normal(size=(num_classes, d)), dtype=torch.float32))
        model.bias.copy_(torch.tensor(rng.normal(size=num_classes), dtype=torch.float32))
    x = rng.normal(size=(11, d)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2, 0, 0, 1, 2, 0])
    w = model.weight.detach().double().numpy()
    b = model.bias.detach().double().numpy()
    g = _analytic_class_grads(w, b, x.astype(np.float64), y, num_classes)

    full = {c: np.concatenate(g[c]) for c in range(num_classes)}
    expected = np.array([[_cos(full[i], full[j]) for j in range(3)] for i in range(3)])
    res = gradient_conflict_matrix(model, torch.tensor(x), torch.tensor(y), num_classes)
    np.testing.assert_allclose(res.matrix, expected, atol=1e-6)
    np.testing.assert_allclose(res.norms, [np.linalg.norm(full[c]) for c in range(3)], rtol=1e-5)
    np.testing.assert_array_equal(res.counts, [5, 3, 3])

    # Per-group matrices slice the same gradients: weight part and bias part.
    for group, part in (("weight", 0), ("bias", 1)):
        exp = np.array([[_cos(g[i][part], g[j][part]) for j in range(3)] for i in range(3)])
        np.testing.assert_allclose(res.groups[group].matrix, exp, atol=1e-6)
        np.testing.assert_allclose(
            res.groups[group].norms, [np.linalg.norm(g[c][part]) for c in range(3)], rtol=1e-5
        )

    off = expected[np.triu_indices(3, 1)]
    assert res.mean == pytest.approx(off.mean(), abs=1e-6)
    assert res.std == pytest.approx(off.std(), abs=1e-6)
    pairs = res.most_adversarial(2)
    assert [p[2] for p in pairs] == sorted(p[2] for p in pairs)
    assert pairs[0][2] == pytest.approx(off.min(), abs=1e-6)
    assert len(res.most_adversarial(None)) == 3

    # Batched entry point, with tiny chunks and buffers, gives the same answer.
    batches = [(torch.tensor(x[i : i + 3]), torch.tensor(y[i : i + 3])) for i in range(0, 11, 3)]
    res_b = gradient_conflict_from_batches(
        model, batches, num_classes, batch_size=2, max_buffered=3
    )
    np.testing.assert_allclose(res_b.matrix, expected, atol=1e-6)
    np.testing.assert_array_equal(res_b.counts, res.counts)


def test_model_without_layer_groups_skips_groups():
    model = nn.Linear(4, 3)
    res = gradient_conflict_matrix(model, torch.randn(6, 4), torch.tensor([0, 1, 2] * 2), 3)
    assert res.groups == {}


def test_empty_class_gives_nan_row_and_warning():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    with pytest.warns(RuntimeWarning, match="class"):
        res = gradient_conflict_matrix(model, torch.randn(6, 4), torch.tensor([0, 1] * 3), 3)
    assert np.isnan(res.matrix[2]).all() and np.isnan(res.matrix[:, 2]).all()
    assert np.isfinite(res.matrix[:2, :2]).all()
    assert np.isnan(res.norms[2]) and res.counts[2] == 0
    assert res.classes_present == [0, 1]
    assert math.isfinite(res.mean) and res.mean == pytest.approx(res.matrix[0, 1])
    assert [(i, j) for i, j, _ in res.most_adversarial(None)] == [(0, 1)]


def test_integer_images_are_refused():
    with pytest.raises(TypeError, match="float"):
        gradient_conflict_matrix(
            nn.Linear(4, 2), torch.zeros(2, 4, dtype=torch.uint8), torch.tensor([0, 1]), 2
        )


def test_out_of_range_labels_are_refused():
    with pytest.raises(ValueError, match="labels"):
        gradient_conflict_matrix(nn.Linear(4, 2), torch.zeros(2, 4), torch.tensor([0, 2]), 2)


# ---- the real models -------------------------------------------------------------------------


def test_fast_path_equals_per_class_loop_on_csba_with_moved_bn_stats():
    num_classes = 4
    model = _changed_bn_model("csba", num_classes)
    bn = model.backbone.stem[0][1]
    assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
    torch.manual_seed(1)
    x = torch.randn(14, 3, IMG, IMG)
    y = torch.tensor([0, 1, 2, 3, 0, 0, 1, 2, 0, 3, 0, 1, 0, 2])

    res = gradient_conflict_matrix(model, x, y, num_classes, batch_size=3)  # chunks 3 + 3 + 0

    names, grads = _loop_class_grads(model, x, y, num_classes)
    flat = torch.stack([torch.cat([g.reshape(-1) for g in gs]) for gs in grads]).double()
    unit = flat / flat.norm(dim=1, keepdim=True)
    np.testing.assert_allclose(res.matrix, (unit @ unit.T).numpy(), atol=1e-5)
    np.testing.assert_allclose(res.norms, flat.norm(dim=1).numpy(), rtol=1e-5)

    # A layer group from the same gradients.
    att = set(model.layer_groups()["attention"])
    sel = [i for i, n in enumerate(names) if n in att]
    ga = torch.stack([torch.cat([gs[i].reshape(-1) for i in sel]) for gs in grads]).double()
    ua = ga / ga.norm(dim=1, keepdim=True)
    np.testing.assert_allclose(res.groups["attention"].matrix, (ua @ ua.T).numpy(), atol=1e-5)
    assert set(res.groups) == set(model.layer_groups())

    # Branch norms from the same gradients.
    shares = branch_shares_from_result(res, model.branch_parameter_names())
    for k, branch in enumerate(model.branch_parameter_names()):
        idx = [i for i, n in enumerate(names) if n in set(branch)]
        gk = torch.stack([torch.cat([gs[i].reshape(-1) for i in idx]) for gs in grads]).double()
        np.testing.assert_allclose(shares.norms[:, k], gk.norm(dim=1).numpy(), rtol=1e-5)


def test_modes_and_grads_are_restored():
    num_classes = 3
    model = _changed_bn_model("csba", num_classes)
    model.train()
    frozen_bn = model.backbone.fire1.squeeze[1]
    frozen_bn.eval()  # a submodule deliberately in eval inside a training model
    known = torch.full_like(model.backbone.stem[0][0].weight, 7.0)
    model.backbone.stem[0][0].weight.grad = known.clone()
    assert model.gates[0].fc1.weight.grad is None
    before_modes = {n: m.training for n, m in model.named_modules()}
    bn_stats = model.backbone.stem[0][1].running_mean.clone()

    x = torch.randn(6, 3, IMG, IMG)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    gradient_conflict_matrix(model, x, y, num_classes)
    gradient_conflict_from_batches(model, [(x[:3], y[:3]), (x[3:], y[3:])], num_classes)
    attention_statistics(model, [(x, y)], num_classes)
    class_mean_angles(model, [(x, y)], num_classes)
    attention_for_image(model, x[0])
    ConflictTracker(x, y, num_classes).record(model, epoch=0)

    assert {n: m.training for n, m in model.named_modules()} == before_modes
    assert model.training and not frozen_bn.training
    assert torch.equal(model.backbone.stem[0][0].weight.grad, known)
    assert model.gates[0].fc1.weight.grad is None
    assert all(p.grad is None for n, p in model.named_parameters() if "stem.0.0.weight" not in n)
    assert torch.equal(model.backbone.stem[0][1].running_mean, bn_stats)  # eval: stats untouched


def test_branch_shares_rows_sum_to_one_and_baseline_branches_are_equal():
    x = torch.randn(8, 3, IMG, IMG)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    csba = _changed_bn_model("csba", 3)
    shares = branch_gradient_shares(csba, x, y, 3)
    assert shares.shares.shape == (3, 3) and shares.norms.shape == (3, 3)
    np.testing.assert_allclose(shares.shares.sum(axis=1), 1.0, atol=1e-12)
    # Baseline in eval mode: logits = sum_k GAP(conv_k(Z)), so dL/dW_k is the same for every k.
    base = _changed_bn_model("baseline", 3)
    bshares = branch_gradient_shares(base, x, y, 3)
    np.testing.assert_allclose(bshares.shares, 1 / 3, atol=1e-6)


# ---- attention and geometry ------------------------------------------------------------------


def test_top_channel_jaccard_known_answers():
    rng = np.random.default_rng(0)
    v = rng.random(768)
    assert top_channel_jaccard(np.stack([v, v]))[0, 1] == 1.0
    # D = 20, top 10% = 2 channels: {0, 1} vs {1, 2} -> 1/3; {0, 1} vs {5, 6} -> 0.
    a = np.zeros((3, 20))
    a[0, [0, 1]] = 1.0
    a[1, [1, 2]] = 1.0
    a[2, [5, 6]] = 1.0
    jac = top_channel_jaccard(a, 0.1)
    assert jac[0, 1] == pytest.approx(1 / 3)
    assert jac[0, 2] == 0.0
    np.testing.assert_array_equal(np.diag(jac), 1.0)
    cos = cosine_similarity_matrix(a)
    assert cos[0, 1] == pytest.approx(0.5) and cos[0, 2] == 0.0


def test_pairwise_angles_known_answers():
    v = np.array([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [1.0, 1.0, 0.0], [-1, 0, 0]])
    ang = pairwise_angles(v)
    assert ang[0, 1] == 0.0  # identical directions
    assert ang[0, 2] == pytest.approx(90.0, abs=1e-12)
    assert ang[0, 3] == pytest.approx(45.0, abs=1e-12)
    assert ang[0, 4] == pytest.approx(180.0, abs=1e-12)
    np.testing.assert_array_equal(np.diag(ang), 0.0)
    assert np.isnan(pairwise_angles(np.array([[0.0, 0.0], [1.0, 0.0]]))[0, 1])


def test_attention_and_class_angles_on_csba():
    num_classes = 3
    model = _changed_bn_model("csba", num_classes)
    x = torch.randn(9, 3, IMG, IMG)
    y = torch.tensor([0, 1, 2] * 3)
    batches = [(x[:4], y[:4]), (x[4:], y[4:])]
    stats = attention_statistics(model, batches, num_classes)
    assert stats.mean.shape == (3, 3, 768) and stats.jaccard.shape == (3, 3)
    assert stats.jaccard_per_class.shape == (3, 3, 3)
    np.testing.assert_allclose(np.diag(stats.jaccard), 1.0)
    # Class 0's mean attention equals a direct computation.
    model.eval()
    with torch.no_grad():
        a = model.forward_parts(x[y == 0]).attention.double().mean(0).numpy()
    np.testing.assert_allclose(stats.mean[0], a, rtol=1e-5, atol=1e-7)

    one = attention_for_image(model, x[0])
    assert one.attention.shape == (3, 768)
    np.testing.assert_allclose(np.diag(one.cosine), 1.0)

    angles = class_mean_angles(model, batches, num_classes)
    assert angles.angles.shape == (3, 3)
    np.testing.assert_allclose(np.diag(angles.angles), 0.0, atol=1e-6)
    assert np.all(angles.angles >= 0) and np.all(angles.angles <= 180)


def test_models_without_attention_give_none():
    model = create_model("baseline", 3)
    x = torch.randn(3, 3, IMG, IMG)
    assert attention_for_image(model, x[:1]) is None
    assert attention_statistics(model, [(x, torch.tensor([0, 1, 2]))], 3) is None


# ---- diagnose --------------------------------------------------------------------------------


def _batches_fn(x, y, size=4):
    return lambda: [(x[i : i + size], y[i : i + size]) for i in range(0, len(y), size)]


@pytest.mark.parametrize("name", ["baseline", "class_heads"])
def test_diagnose_is_json_serialisable(name):
    num_classes = 3
    model = _changed_bn_model(name, num_classes)
    x = torch.randn(10, 3, IMG, IMG)
    y = torch.tensor([0, 1, 2, 0, 0, 1, 0, 2, 0, 1])
    names = ["functional", "possibly", "defective"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every class present: no warning expected
        out = diagnose(model, _batches_fn(x, y), num_classes, class_names=names, subset_per_class=2)
    json.dumps(out, allow_nan=False)
    assert out["gcm"]["classes"] == names
    assert np.array(out["gcm"]["matrix"]).shape == (3, 3)
    assert out["gcm"]["counts"] == [2, 2, 2] == out["subset"]["counts"]
    assert {"stem", "fire8", "heads"} <= set(out["layers"])
    assert np.array(out["class_angles"]["matrix"]).shape == (3, 3)
    shares = np.array(out["branches"]["shares"])
    np.testing.assert_allclose(shares.sum(axis=1), 1.0, atol=1e-9)
    if name == "baseline":
        assert out["attention"] is None
        assert shares.shape == (3, 3)  # K = 3 summed branches
    else:
        assert shares.shape == (3, num_classes)  # K = C class heads
        assert np.array(out["attention"]["mean"]).shape == (3, num_classes, 768)
        assert np.array(out["attention"]["jaccard"]).shape == (num_classes, num_classes)
    # The subset matrix is the matrix of the collected subset.
    idx = balanced_subset_indices(y.numpy(), 2, 0)
    direct = gradient_conflict_matrix(model, x[idx], y[idx], num_classes)
    np.testing.assert_allclose(out["gcm"]["matrix"], direct.matrix, atol=1e-6)


def test_diagnose_whole_split_and_missing_class_gives_none():
    model = nn.Linear(4, 3)  # no forward_features: diagnose needs the model hooks
    with pytest.raises(AttributeError):
        diagnose(model, _batches_fn(torch.randn(4, 4), torch.tensor([0, 1, 0, 1])), 3)
    csba = _changed_bn_model("csba", 3)
    x = torch.randn(6, 3, IMG, IMG)
    y = torch.tensor([0, 1, 0, 1, 0, 1])  # class 2 absent
    with pytest.warns(RuntimeWarning):
        out = diagnose(csba, _batches_fn(x, y), 3, subset_per_class=None)
    json.dumps(out, allow_nan=False)
    assert out["gcm"]["matrix"][2] == [None, None, None]
    assert out["gcm"]["counts"] == [3, 3, 0]


# ---- training helpers ------------------------------------------------------------------------


def test_generalisation_gap_and_conflict_change():
    history = [
        {"epoch": 1, "train_loss": 1.0, "val_loss": 1.2},
        {"epoch": 2, "train_loss": 0.5, "val_loss": 0.9},
    ]
    assert generalisation_gap(history, 2) == pytest.approx(0.4)
    with pytest.raises(KeyError):
        generalisation_gap(history, 3)
    assert conflict_change(-0.1, -0.3) == pytest.approx(0.2)
    assert math.isnan(conflict_change(None, -0.3))


def test_conflict_tracker_records_the_subset_matrix():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    images = torch.randint(0, 256, (30, 4), dtype=torch.uint8)
    labels = torch.tensor([0] * 20 + [1] * 7 + [2] * 3)
    tracker = ConflictTracker.from_dataset(
        images, labels, 3, per_class=5, seed=1, transform=lambda t: t.float() / 255, every=2
    )
    assert torch.bincount(tracker.labels).tolist() == [5, 5, 3]
    assert tracker.maybe_record(model, 1) is None
    entry = tracker.maybe_record(model, 2)
    idx = balanced_subset_indices(labels.numpy(), 5, 1)
    direct = gradient_conflict_matrix(model, images[idx].float() / 255, labels[idx], 3)
    np.testing.assert_allclose(entry["matrix"], direct.matrix, atol=1e-7)
    assert entry["epoch"] == 2 and entry["mean"] == pytest.approx(direct.mean)
    assert tracker.history == [entry]
    json.dumps(tracker.state(), allow_nan=False)
    assert tracker.state()["indices"] == idx.tolist()


@settings(max_examples=30, deadline=None)
@given(
    labels=st.lists(st.integers(0, 4), min_size=0, max_size=60),
    per_class=st.integers(1, 10),
    seed=st.integers(0, 2**16),
)
def test_balanced_subset_is_fixed_and_balanced(labels, per_class, seed):
    labels = np.array(labels, dtype=np.int64)
    idx = balanced_subset_indices(labels, per_class, seed)
    np.testing.assert_array_equal(idx, balanced_subset_indices(labels, per_class, seed))
    assert np.all(np.diff(idx) > 0)  # sorted, no repeats
    for c in range(5):
        assert (labels[idx] == c).sum() == min((labels == c).sum(), per_class)


# ---- stored runs -----------------------------------------------------------------------------


def _fake_run_and_bundle(num_classes=3, n=9):
    from types import SimpleNamespace

    from csba.data import ImageSet

    g = torch.Generator().manual_seed(0)
    split = ImageSet(
        images=torch.randint(0, 256, (n, 3, IMG, IMG), dtype=torch.uint8, generator=g),
        labels=torch.arange(n) % num_classes,
    )
    bundle = SimpleNamespace(
        mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3], split=lambda name: split, train=split
    )
    run = SimpleNamespace(
        model=_changed_bn_model("csba", num_classes),
        meta={
            "num_classes": num_classes,
            "best_epoch": 2,
            "history": [
                {"epoch": 1, "train_loss": 1.0, "val_loss": 1.1},
                {"epoch": 2, "train_loss": 0.7, "val_loss": 1.0},
            ],
        },
        classes=["a", "b", "c"],
        seed=0,
        path="/nonexistent/csba-s0",
    )
    return run, bundle


def test_diagnose_run_uses_normalised_split_and_history():
    from csba.data import normalize
    from csba.diagnostics.run import diagnose_run

    run, bundle = _fake_run_and_bundle()
    out = diagnose_run("ignored", lambda _d, _r: (run, bundle), per_class=2, store=False)
    json.dumps(out, allow_nan=False)
    assert out["generalisation_gap"] == pytest.approx(0.3)
    assert out["conflict_change"] is None  # no diagnosed baseline beside it
    assert out["split"] == "train" and out["gcm"]["classes"] == ["a", "b", "c"]
    split = bundle.train
    idx = balanced_subset_indices(split.labels.numpy(), 2, 0)
    x = normalize(split.images[idx], bundle.mean, bundle.std)
    direct = gradient_conflict_matrix(run.model, x, split.labels[idx], 3)
    np.testing.assert_allclose(out["gcm"]["matrix"], direct.matrix, atol=1e-6)

    tracker = ConflictTracker.from_split(split, bundle.mean, bundle.std, 3, 2, 0)
    entry = tracker.record(run.model, epoch=1)
    np.testing.assert_allclose(entry["matrix"], direct.matrix, atol=1e-6)


def test_refresh_conflict_changes_fills_runs_diagnosed_before_their_baseline(tiny_runs, tmp_path):
    import shutil

    from csba.diagnostics.run import refresh_conflict_changes
    from csba.store import read_run_json, update_run_json

    root = tmp_path / "runs"
    for v, mean, change in (("baseline", -0.30, None), ("csba", -0.10, None)):
        dst = root / "ds" / f"{v}-s0"
        shutil.copytree(tiny_runs[v], dst)
        update_run_json(dst, diagnostics={"gcm": {"mean": mean}, "conflict_change": change})
    (root / "ds" / "focal-s0").mkdir()  # an unreadable folder is skipped
    (root / "ds" / "focal-s0" / "run.json").write_text("{")
    changed = refresh_conflict_changes(root)
    assert sorted(p.name for p in changed) == ["baseline-s0", "csba-s0"]
    csba = read_run_json(root / "ds" / "csba-s0")["diagnostics"]
    assert csba["conflict_change"] == pytest.approx(0.20) and csba["gcm"]["mean"] == -0.10
    assert read_run_json(root / "ds" / "baseline-s0")["diagnostics"]["conflict_change"] == 0.0
    assert refresh_conflict_changes(root) == []  # idempotent


def test_conflict_change_is_against_the_baseline_of_the_same_backbone(tiny_runs, tmp_path):
    # csba-resnet18-s0 is measured against baseline-resnet18-s0, never trifire's baseline-s0;
    # without a baseline of its own backbone it has no change (None).
    import shutil

    from csba.diagnostics.run import refresh_conflict_changes
    from csba.store import read_run_json, update_run_json

    ds = tmp_path / "runs" / "ds"
    for name, v, backbone, mean in (
        ("baseline-s0", "baseline", "trifire", -0.30),
        ("baseline-resnet18-s0", "baseline", "resnet18", -0.50),
        ("csba-resnet18-s0", "csba", "resnet18", -0.10),
        ("csba-resnet50-s0", "csba", "resnet50", -0.20),
    ):
        shutil.copytree(tiny_runs[v], ds / name)
        cfg = read_run_json(ds / name)["config"]
        update_run_json(
            ds / name,
            config={**cfg, "backbone": backbone},
            diagnostics={"gcm": {"mean": mean}, "conflict_change": None},
        )
    refresh_conflict_changes(ds.parent)
    change = {p.name: read_run_json(p)["diagnostics"]["conflict_change"] for p in ds.iterdir()}
    assert change["csba-resnet18-s0"] == pytest.approx(0.40)
    assert change["csba-resnet50-s0"] is None
    assert change["baseline-s0"] == change["baseline-resnet18-s0"] == 0.0
