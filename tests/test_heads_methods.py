"""Heads, methods and backbones combine freely (docs/design.md §1): every head x method trains
one step (cRT's stage 2 too) on trifire (quick) and resnet18 (slow), or is refused in one line;
names resolve to presets; the cosine classifier of each head is worked by hand; the CLI and
protocol take HEAD+METHOD."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from csba.data import load_dataset
from csba.heads import HEADS, MAX_CLASS_HEADS, list_heads
from csba.loop import Loop
from csba.methods import METHODS, list_methods
from csba.models import (
    PRESETS,
    check_variant,
    create_model,
    model_info,
    parse_variant,
    variant_name,
)
from csba.train import TrainConfig

PAIRS = [(h, m) for h in list_heads() for m in list_methods()]


@pytest.fixture(scope="module")
def bundle(tiny_folder):
    return load_dataset("imagefolder", 16, data_root=str(tiny_folder))


def _one_step(head, method, bundle, backbone="trifire"):
    """One epoch (a few batches) of head x method, then, for cRT, one of its stage 2; returns
    the loop and the weights before."""
    name = variant_name(head, method)
    cfg = TrainConfig(
        dataset="imagefolder",
        variant=name,
        image_size=16,
        batch_size=16,
        backbone=backbone,
        precision="fp32",
        device="cpu",
    )
    torch.manual_seed(0)
    kwargs = {} if backbone == "trifire" else {"backbone": backbone}
    model = create_model(name, bundle.num_classes, **kwargs)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loop = Loop(cfg, model, bundle, torch.device("cpu"), "fp32", False)
    loss, _ = loop.train_epoch(1)
    assert math.isfinite(loss), (head, method)
    loop.validate(1, loss, cfg.lr, 0.0)
    return loop, before


def _check(head, method, bundle, backbone="trifire"):
    loop, before = _one_step(head, method, bundle, backbone)
    model = loop.model
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("backbone.") for k in changed)
    assert any(not k.startswith("backbone.") for k in changed)
    if method == "crt":  # stage 2: the classifier alone moves, the backbone stays
        loop.enter("stage2", 2)
        frozen = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("backbone.")}
        assert math.isfinite(loop.train_epoch(2)[0])
        state = model.state_dict()
        assert all(torch.equal(state[k], v) for k, v in frozen.items())
        assert set(model.classifier_parameter_names()) == {
            n for n, p in model.named_parameters() if p.requires_grad
        }


@pytest.mark.parametrize(("head", "method"), PAIRS)
def test_every_head_trains_with_every_method_on_trifire(head, method, bundle):
    _check(head, method, bundle)


@pytest.mark.slow
@pytest.mark.parametrize(("head", "method"), PAIRS)
def test_every_head_trains_with_every_method_on_resnet18(head, method, bundle):
    _check(head, method, bundle, backbone="resnet18")


def test_class_heads_are_refused_above_their_limit_in_one_line():
    check_variant("class_heads", MAX_CLASS_HEADS)
    for name in ("class_heads", "class_heads+ldam_drw"):
        with pytest.raises(ValueError, match=r"refused above 32 classes \(33 asked\)") as e:
            check_variant(name, MAX_CLASS_HEADS + 1)
        assert "\n" not in str(e.value)
        with pytest.raises(ValueError, match="refused above"):
            create_model(name, 100)
    check_variant("csba+ldam_drw", 1000)  # the other heads take any number of classes


def test_names_resolve_to_presets_and_back():
    for name, (head, method) in PRESETS.items():
        assert variant_name(head, method) == name and parse_variant(name) == (head, method)
    assert variant_name("csba", "ldam_drw") == "csba+ldam_drw"
    assert parse_variant("csba+ldam_drw") == ("csba", "ldam_drw")
    assert parse_variant("baseline+ldam_drw") == ("baseline", "ldam_drw")  # = the ldam_drw preset
    assert variant_name(*parse_variant("baseline+ldam_drw")) == "ldam_drw"
    for bad, msg in (
        ("csba+sgd", "unknown method 'sgd'"),
        ("mlp+weighted", "unknown head 'mlp'"),
        ("nope", "unknown variant 'nope'"),
    ):
        with pytest.raises(ValueError, match=msg):
            parse_variant(bad)
    info = model_info("csba+ldam_drw")
    assert (info["head"], info["method"], info["preset"], info["control"]) == (
        "csba",
        "ldam_drw",
        None,
        "ldam_drw",  # what the CSBA gates add to LDAM-DRW
    )
    assert model_info("pcgrad")["control"] == "pcgrad_control"
    assert model_info("csba")["control"] is None


def test_the_preset_and_the_pair_build_the_same_network():
    torch.manual_seed(0)
    a = create_model("ldam_drw", 4)
    torch.manual_seed(0)
    b = create_model("baseline+ldam_drw", 4)
    assert a.variant == b.variant == "ldam_drw" and a.method == b.method == "ldam_drw"
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def _pooled(x):
    return x.mean(dim=(2, 3))


@torch.no_grad()
def test_cosine_heads_known_answer():
    """Each head's cosine classifier (a method asks for it), worked by hand in eval mode:
    csba s * mean_k cos(GAP(a_k * Z), w_k), gradnorm s * sum_k softmax(w)_k cos_k,
    class_heads s * cos(GAP(body_c(a_c * Z)), w_c)."""
    torch.manual_seed(0)
    x = torch.randn(3, 3, 32, 32)
    for head in list_heads():
        model = create_model(f"{head}+ldam_drw", 4).eval()
        assert model.cosine and model.scale == 30.0
        z = model.forward_features(x)
        got = model(x)
        if head == "class_heads":
            cols = []
            for h in model.heads:
                a = h.gate(z)
                f = _pooled(h.body(z * a[:, :, None, None]))
                cols.append(30.0 * F.cosine_similarity(f, h.classifier.weight[0][None], dim=1))
            want = torch.stack(cols, 1)
        else:
            K = len(model.branches)
            gates = [g(z) for g in model.gates] if head == "csba" else [None] * K
            cos = []
            for k in range(K):
                zk = z if gates[k] is None else z * gates[k][:, :, None, None]
                w = model.branches[k].weight  # (C, F)
                cos.append(F.cosine_similarity(_pooled(zk)[:, None, :], w[None], dim=2))
            mix = (
                torch.softmax(model.branch_weights, 0)
                if head == "gradnorm"
                else torch.full((K,), 1.0 / K)
            )
            want = 30.0 * sum(mix[k] * cos[k] for k in range(K))
        assert got.shape == (3, 4) and got.abs().max() <= 30.0 + 1e-4
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_the_cosine_heads_keep_their_state_dict_keys():
    keys = list(create_model("csba+ldam_drw", 4).state_dict())
    assert "branches.0.weight" in keys and "branches.0.bias" not in keys  # cosine: no bias
    assert "gates.0.fc1.weight" in keys
    heads = list(create_model("class_heads+ldam_drw", 4).state_dict())
    assert "heads.0.classifier.weight" in heads and "heads.0.gate.fc1.weight" in heads


def test_a_focal_method_is_the_weighted_focal_loss():
    from csba.losses import class_weights, focal_loss

    counts = torch.tensor([30, 20, 10])
    w = class_weights(counts)
    logits, y = torch.randn(8, 3), torch.tensor([0, 1, 2, 0, 1, 2, 0, 0])
    cfg = TrainConfig()
    got = METHODS["focal"].loss("train", counts, w, cfg, None)(logits, y)
    assert torch.allclose(got, focal_loss(logits, y, w, 2.0))
    assert METHODS["focal"].record(None, counts, cfg, None) == {"name": "weighted"}


def test_parts_lists_the_registries_and_presets(capsys):
    from csba.cli import main

    assert main(["parts", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert list(got["heads"]) == list(HEADS) and list(got["methods"]) == list(METHODS)
    assert got["presets"]["csba"] == {
        "head": "csba",
        "method": "weighted",
        "description": model_info("csba")["description"],
    }
    assert got["heads"]["class_heads"]["max_classes"] == MAX_CLASS_HEADS
    assert main(["parts"]) == 0
    text = capsys.readouterr().out
    assert "ldam_drw" in text and "csba+ldam_drw" in text and "pcgrad_control  = baseline" in text


def test_train_takes_head_and_method(tiny_folder, tmp_path, capsys):
    from csba.cli import main

    out = tmp_path / "runs"
    common = [
        "--dataset",
        "imagefolder",
        "--data-root",
        str(tiny_folder),
        "--image-size",
        "16",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--out",
        str(out),
    ]
    assert main(["train", "--head", "csba", "--method", "ldam_drw", *common]) == 0
    run = out / "imagefolder-16px" / "csba+ldam_drw-s0"
    meta = json.loads((run / "run.json").read_text())
    assert meta["variant"] == "csba+ldam_drw"
    assert meta["composition"] == {
        "head": "csba",
        "method": "ldam_drw",
        "backbone": "trifire",
        "preset": None,
    }
    assert meta["method"]["name"] == "ldam_drw" and meta["method"]["scale"] == 30.0
    # a pair equal to a preset lands in the preset's folder
    assert main(["train", "--head", "baseline", "--method", "ldam_drw", *common]) == 0
    assert (out / "imagefolder-16px" / "ldam_drw-s0" / "run.json").is_file()
    capsys.readouterr()
    assert main(["train", "--head", "csba", "--method", "sgd", *common]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown method 'sgd'" in err


def test_a_head_that_cannot_take_the_classes_is_refused_before_any_data(tmp_path, capsys):
    """33 empty class folders: had any data been loaded, the error would be "holds no image
    files"; the head's limit is named first, in one line, by train and by protocol."""
    from csba.cli import main

    for c in range(MAX_CLASS_HEADS + 1):
        (tmp_path / "data" / f"c{c:02d}").mkdir(parents=True)
    common = [
        "--dataset",
        "imagefolder",
        "--data-root",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "runs"),
    ]
    for argv in (
        ["train", "--variant", "class_heads", *common],
        ["protocol", "--variants", "class_heads+ldam_drw", *common],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "refused above 32 classes (33 asked)" in err, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_protocol_and_jobs_share_one_post_training_pipeline(tiny_folder, tmp_path, monkeypatch):
    """protocol (serial) and the Training page's jobs both end in
    csba.pipeline.after_training, for a run trained just now."""
    import csba.pipeline
    from csba.jobs import JobManager
    from csba.protocol import run_protocol

    calls = []
    real = csba.pipeline.after_training

    def spy(run_dir, **kw):
        calls.append((run_dir, kw.get("trained_now", True)))
        return real(run_dir, **kw)

    monkeypatch.setattr(csba.pipeline, "after_training", spy)
    options = {
        "dataset": "imagefolder",
        "data_root": str(tiny_folder),
        "image_size": 16,
        "epochs": 1,
        "batch_size": 16,
        "out": str(tmp_path / "p"),
    }
    done = run_protocol(options, variants=["csba+ldam_drw"], seeds=[0], diagnose_per_class=4)
    assert calls == [(str(done[0]), True)]
    meta = json.loads((done[0] / "run.json").read_text())
    assert meta["evaluation"]["views"] == 4 and "diagnostics" in meta
    assert "predictions_single_view" in meta
    before = (done[0] / "run.json").read_bytes()
    run_protocol(options, variants=["csba+ldam_drw"], seeds=[0], diagnose_per_class=4)
    assert calls[1] == (str(done[0]), False)  # trained before: nothing left to redo
    assert (done[0] / "run.json").read_bytes() == before
    manager = JobManager()
    cfg = TrainConfig(
        dataset="imagefolder",
        data_root=str(tiny_folder),
        variant="csba+ldam_drw",
        image_size=16,
        epochs=1,
        batch_size=16,
        out=str(tmp_path / "j"),
    )
    job = manager.wait(manager.submit([cfg]), timeout=180)
    assert job.runs[0].status == "completed", job.runs[0].error
    assert calls[2] == (job.runs[0].run_dir, True)
