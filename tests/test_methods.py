"""Known answers for the long-tail methods (losses, PCGrad, cRT, LDAM-DRW) and train --resume."""

import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from csba.losses import (
    effective_number_weights,
    ldam_loss,
    ldam_margins,
    log_prior,
    logit_adjusted_loss,
    make_loss,
    per_class_mean_losses,
)
from csba.methods import (
    class_balanced_indices,
    classifier_parameters,
    drw_starts,
    pcgrad,
    reset_classifier,
)
from csba.models import create_model, list_models, model_info
from csba.step import TrainStep
from csba.train import TrainConfig, TrainingError, train

NEW = ("logit_adjust", "ldam_drw", "crt", "pcgrad", "pcgrad_control")


def test_registry_lists_the_long_tail_methods():
    assert set(NEW) <= set(list_models())
    assert list_models()[:5] == ["baseline", "csba", "focal", "gradnorm", "class_heads"]
    methods = {v: model_info(v)["method"] for v in NEW}
    assert methods == {
        "logit_adjust": "logit_adjust",
        "ldam_drw": "ldam_drw",
        "crt": "crt",
        "pcgrad": "pcgrad",
        "pcgrad_control": "class_sum",
    }


def test_logit_adjusted_loss_is_balanced_softmax_at_tau_one():
    logits, y, counts = torch.tensor([[1.0, 2.0]]), torch.tensor([0]), [3, 1]
    # balanced softmax (Ren et al.): -log(n_0 e^1 / (n_0 e^1 + n_1 e^2))
    expected = -math.log(3 * math.e / (3 * math.e + 1 * math.e**2))
    got = logit_adjusted_loss(logits, y, log_prior(counts), tau=1.0)
    assert abs(got.item() - expected) < 1e-6
    # tau = 0 is plain, unweighted cross-entropy
    plain = logit_adjusted_loss(logits, y, log_prior(counts), tau=0.0)
    assert abs(plain.item() - F.cross_entropy(logits, y).item()) < 1e-6
    # tau = 2: logits + 2 log(prior)
    z = logits + 2 * torch.log(torch.tensor([0.75, 0.25]))
    assert (
        abs(
            make_loss("logit_adjust", None, counts=counts, tau=2.0)(logits, y).item()
            - F.cross_entropy(z, y).item()
        )
        < 1e-6
    )


def test_ldam_margins_and_loss_known_answer():
    # n^(-1/4) = 1/2, 1/3, 1 -> scaled so that the largest is 0.5
    torch.testing.assert_close(ldam_margins([16, 81, 1]), torch.tensor([0.25, 1 / 6, 0.5]))
    # s cos = 30 * [0.5, 0.2], y = 0, m_0 = 0.25: z = [30 (0.5 - 0.25), 6]
    logits, y = torch.tensor([[15.0, 6.0]]), torch.tensor([0])
    expected = -7.5 + math.log(math.exp(7.5) + math.exp(6.0))
    got = ldam_loss(logits, y, torch.tensor([0.25, 0.5]), scale=30.0)
    assert abs(got.item() - expected) < 1e-5
    # re-weighted: weight normalisation as PyTorch's weighted cross-entropy
    logits2, y2 = torch.tensor([[15.0, 6.0], [0.0, 0.0]]), torch.tensor([0, 1])
    w = torch.tensor([1.0, 3.0])
    l1 = -(0.0 - 15.0) + math.log(math.exp(0.0 - 15.0) + math.exp(0.0))  # z = [0, -15]
    want = (1.0 * expected + 3.0 * l1) / 4.0
    got2 = ldam_loss(logits2, y2, torch.tensor([0.25, 0.5]), scale=30.0, weight=w)
    assert abs(got2.item() - want) < 1e-5


def test_effective_number_weights_known_answer():
    # beta = 0.5: (1 - b) / (1 - b^n) = 1, 2/3 for n = 1, 2; scaled to sum C = 2
    torch.testing.assert_close(effective_number_weights([1, 2], beta=0.5), torch.tensor([1.2, 0.8]))
    assert effective_number_weights([5, 0, 5])[1] == 0


def test_per_class_mean_losses_skip_absent_classes():
    logits = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    y = torch.tensor([0, 0, 2])
    losses, classes = per_class_mean_losses(logits, y)
    assert classes.tolist() == [0, 2]
    ce = F.cross_entropy(logits, y, reduction="none")
    torch.testing.assert_close(losses, torch.stack([ce[:2].mean(), ce[2]]))


def test_pcgrad_known_answer():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    # g1 . g2 = -1: g1' = g1 + g2 / 2 = (0.5, 0.5); g2' = g2 + g1 = (0, 1)
    torch.testing.assert_close(pcgrad([g1, g2]), torch.tensor([0.5, 1.5]))
    # no conflict: the plain sum
    torch.testing.assert_close(pcgrad([g1, torch.tensor([1.0, 1.0])]), torch.tensor([2.0, 1.0]))
    # projected gradients no longer conflict with the original ones they were projected off
    torch.testing.assert_close(pcgrad([g1]), g1)


def test_pcgrad_order_follows_the_generator():
    torch.manual_seed(0)
    gs = [torch.randn(5) for _ in range(4)]
    a = pcgrad(gs, torch.Generator().manual_seed(3))
    b = pcgrad(gs, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize("mode", ["pcgrad", "class_sum"])
def test_train_step_applies_the_combined_per_class_gradient(mode):
    torch.manual_seed(0)
    model = nn.Linear(3, 3)
    x, y = torch.randn(6, 3), torch.tensor([0, 0, 1, 1, 2, 0])
    params = list(model.parameters())
    losses, _ = per_class_mean_losses(model(x), y)
    grads = [
        torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, retain_graph=True)])
        for loss in losses
    ]
    want = pcgrad(grads, torch.Generator().manual_seed(1)) if mode == "pcgrad" else sum(grads)
    before = torch.cat([p.detach().reshape(-1).clone() for p in params])
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    step = TrainStep(
        model,
        None,
        opt,
        torch.device("cpu"),
        bf16=False,
        graph=False,
        mode=mode,
        task_generator=torch.Generator().manual_seed(1),
    )
    reported = step(x, y)
    after = torch.cat([p.detach().reshape(-1) for p in params])
    torch.testing.assert_close(before - after, want)
    torch.testing.assert_close(reported, losses.mean().detach())


def test_class_balanced_sampler_draws_classes_uniformly():
    labels = torch.tensor([0] * 900 + [1] * 90 + [2] * 10)
    idx = class_balanced_indices(labels, torch.Generator().manual_seed(0))
    assert idx.shape == (1000,)
    freq = torch.bincount(labels[idx], minlength=3).float() / 1000
    assert torch.all((freq - 1 / 3).abs() < 0.05), freq


def test_drw_starts_after_a_validation_plateau():
    assert not drw_starts([0.1, 0.2, 0.2], patience=2)
    assert drw_starts([0.1, 0.2, 0.2, 0.15], patience=2)
    assert not drw_starts([0.1, 0.2, 0.2, 0.3], patience=2)


def test_reset_classifier_keeps_the_backbone():
    model = create_model("csba", 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reset_classifier(model)
    after = model.state_dict()
    head = set(classifier_parameters(model))
    assert head and all(not k.startswith("backbone.") for k in head)
    assert any(n.startswith("gates.") for n in head)  # csba: the SE gates are re-initialised too
    for k, v in after.items():
        if k.startswith("backbone."):
            assert torch.equal(v, before[k]), k
    assert any(not torch.equal(after[k], before[k]) for k in head)


def test_ldam_net_logits_are_scaled_cosines():
    model = create_model("ldam_drw", 4).eval()
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 4) and out.abs().max() <= 30.0 + 1e-4


def _cfg(folder, run_dir, **kw):
    base = dict(
        dataset="imagefolder",
        data_root=str(folder),
        image_size=32,
        batch_size=16,
        run_dir=str(run_dir),
        weights_dtype="float32",
    )
    return TrainConfig(**{**base, **kw})


def _stop_after(calls: int):
    seen = {"n": 0}

    def should_stop():
        seen["n"] += 1
        return seen["n"] > calls

    return should_stop


@pytest.mark.parametrize("variant", NEW)
def test_each_method_trains_and_records_how(variant, tiny_folder, tmp_path):
    meta = train(
        _cfg(
            tiny_folder,
            tmp_path / variant,
            variant=variant,
            epochs=3,
            patience=1,
            crt_epochs=2,
            drw_patience=1,
        )
    )
    assert meta["status"] == "completed" and meta["method"]["name"] == model_info(variant)["method"]
    assert math.isfinite(meta["history"][-1]["train_loss"])
    if variant == "crt":
        phases = [h["phase"] for h in meta["history"]]
        assert phases.count("stage2") == 2 and phases[0] == "stage1"
        assert meta["best_epoch"] == meta["epochs_run"]  # stage 2 keeps its last epoch
        assert meta["method"]["stage2_epochs"] == 2 and meta["method"]["stage2_lr"] == 1e-3
    if variant == "ldam_drw":
        drw = meta["method"]["drw_epoch"]
        phases = [h["phase"] for h in meta["history"]]
        if drw is not None:
            assert phases.index("drw") + 1 == drw and meta["best_epoch"] >= drw
        assert max(meta["method"]["margins"]) == pytest.approx(0.5)


def test_crt_stage2_freezes_the_backbone_and_resumes(tiny_folder, tmp_path):
    # 2 batches per epoch; stop in the first stage-2 epoch (epoch 3), after stage 1's 2 epochs
    cfg = _cfg(tiny_folder, tmp_path / "r", variant="crt", epochs=2, crt_epochs=2, resume=True)
    first = train(cfg, should_stop=_stop_after(5))
    assert first["status"] == "cancelled"
    state = json.loads((tmp_path / "r" / "resume" / "state.json").read_text())
    assert state["phases"]["phase"] == "stage2" and state["epoch"] == 2
    stage1 = load_file(str(tmp_path / "r" / "resume" / state["tensors"]))
    done = train(cfg)
    assert done["status"] == "completed" and done["runtime"]["resumed_at_epochs"] == [2]
    assert not (tmp_path / "r" / "resume").exists()
    final = load_file(str(tmp_path / "r" / "model.safetensors"))
    best1 = {k[len("best.") :]: v for k, v in stage1.items() if k.startswith("best.")}
    for k, v in final.items():
        if k.startswith("backbone."):  # frozen, BatchNorm statistics included
            assert torch.equal(v, best1[k]), k
    assert any(not torch.equal(final[k], best1[k]) for k in final if k.startswith("branches."))
    # and the same as a run never interrupted
    whole = train(_cfg(tiny_folder, tmp_path / "w", variant="crt", epochs=2, crt_epochs=2))
    ref = load_file(str(tmp_path / "w" / "model.safetensors"))
    assert all(torch.equal(final[k], ref[k]) for k in ref)
    assert [h["val_loss"] for h in whole["history"]] == [h["val_loss"] for h in done["history"]]


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["baseline", "ldam_drw", "pcgrad"])
def test_resume_matches_an_uninterrupted_run(variant, tiny_folder, tmp_path):
    kw = dict(
        variant=variant,
        epochs=4,
        patience=50,
        drw_patience=1,
        conflict_every=2,
        ema_decay=0.5 if variant == "baseline" else 0.0,
    )
    whole = train(_cfg(tiny_folder, tmp_path / "w", **kw))
    cut = train(_cfg(tiny_folder, tmp_path / "r", resume=True, **kw), should_stop=_stop_after(5))
    assert cut["status"] == "cancelled" and cut["epochs_run"] == 2
    done = train(_cfg(tiny_folder, tmp_path / "r", resume=True, **kw))
    assert done["runtime"]["resumed_at_epochs"] == [2]
    keys = ("train_loss", "val_loss", "val_macro_f1", "lr")
    assert [[h[k] for k in keys] for h in done["history"]] == [
        [h[k] for k in keys] for h in whole["history"]
    ]
    assert done["metrics"] == whole["metrics"] and done["best_epoch"] == whole["best_epoch"]
    assert done["conflict_history"] == whole["conflict_history"]
    a = load_file(str(tmp_path / "w" / "model.safetensors"))
    b = load_file(str(tmp_path / "r" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_other_options_and_a_damaged_state(tiny_folder, tmp_path):
    cfg = _cfg(tiny_folder, tmp_path / "r", variant="baseline", epochs=3, resume=True)
    train(cfg, should_stop=_stop_after(3))
    with pytest.raises(TrainingError, match=r"other options \(lr\)"):
        train(_cfg(tiny_folder, tmp_path / "r", variant="baseline", epochs=3, resume=True, lr=1e-3))
    state = tmp_path / "r" / "resume"
    tensors = next(state.glob("state-e*.safetensors"))
    tensors.write_bytes(tensors.read_bytes()[:100])
    with pytest.raises(TrainingError, match="checksum; delete"):
        train(cfg)
    # without --resume the state is ignored and the run starts over
    shutil.rmtree(state)
    assert train(cfg)["status"] == "completed"


def test_loop_state_round_trips_through_its_files(tmp_path):
    """LoopState is the one list of what --resume restores: every field survives save/load."""
    from dataclasses import fields

    from csba.resume import LoopState

    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.ones(4, 3)).sum().backward()
    opt.step()
    state = LoopState(
        epoch=3,
        config={"lr": 1e-3, "variant": "baseline"},
        phases={"phase": "drw", "start": 3, "drw_epoch": 3},
        model=net.state_dict(),
        optimizer=opt.state_dict(),
        rng={"torch": torch.get_rng_state(), "gen": torch.Generator().manual_seed(1).get_state()},
        scheduler={"last_epoch": 3, "_last_lr": [1e-3]},
        best_epoch=2,
        best={k: v + 1 for k, v in net.state_dict().items()},
        best_f1=0.5,
        ema={k: v * 2 for k, v in net.state_dict().items()},
        history=[{"epoch": 1, "train_loss": 0.7}],
        conflict_history=[{"epoch": 2, "mean": -0.1}],
        finished=True,
        stop_reason="early stop",
        train_seconds=12.5,
        resumed_at=[1],
        threads=2,
    )
    state.save(tmp_path)
    back = LoopState.load(tmp_path)
    for f in fields(LoopState):
        a, b = getattr(state, f.name), getattr(back, f.name)
        if f.name in ("model", "best", "ema", "rng"):
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f.name
        elif f.name == "optimizer":
            assert json.loads(json.dumps(a["param_groups"])) == b["param_groups"]  # tuples: lists
            for i, st in a["state"].items():
                assert all(torch.equal(torch.as_tensor(v), b["state"][i][k]) for k, v in st.items())
        else:
            assert a == b, f.name
    assert LoopState.load(tmp_path / "nothing") is None


def test_methods_are_registered_units_with_their_capabilities():
    """Each preset's method is a unit in csba/methods (its paper in its docstring); what
    csba.train and csba.distributed once decided by name now comes from the unit, unchanged."""
    from csba.methods import METHODS, get_method
    from csba.models import create_model, list_models

    assert {create_model(v, 4).method for v in list_models()} == set(METHODS)
    for name, m in METHODS.items():
        assert m.name == name and m.paper  # where the recipe comes from
    assert {n for n, m in METHODS.items() if m.cuda_graph} == {"weighted", "focal", "logit_adjust"}
    assert {n for n, m in METHODS.items() if m.torchrun} == {
        "weighted",
        "focal",
        "logit_adjust",
        "ldam_drw",
    }
    modes = {n: m.step_mode for n, m in METHODS.items()}
    assert modes == {
        "weighted": "loss",
        "focal": "loss",
        "logit_adjust": "loss",
        "ldam_drw": "loss",
        "crt": "loss",
        "pcgrad": "pcgrad",
        "class_sum": "class_sum",
    }
    assert {n: m.first_phase for n, m in METHODS.items() if m.first_phase != "train"} == {
        "ldam_drw": "ldam",
        "crt": "stage1",
    }
    with pytest.raises(ValueError, match="unknown method 'sgd'; choose one of: weighted"):
        get_method("sgd")
