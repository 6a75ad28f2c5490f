"""timm backbones (``--backbone timm:NAME``): two small models of different families build
every head and train one step; stages map parameters as worked out by hand; a local safetensors
file (timm's classifier or the features model) loads; ImageNet weights without network and
models without features_only are refused in one line; a run goes through evaluate and diagnose
with timm's stages as its layer groups."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from csba.backbones import BackboneError, build_backbone, load_pretrained
from csba.config import TrainConfig
from csba.heads import list_heads
from csba.losses import class_weights
from csba.methods import get_method
from csba.models import count_parameters, create_model, variant_name
from csba.step import TrainStep
from csba.store import run_dir_for

timm = pytest.importorskip("timm")

# two families: a ResNet (torchvision-like stages) and a MobileNetV3 (timm's EfficientNet
# builder), both small; their last feature stage's width and parameter count
MODELS = {"timm:resnet10t": (512, 4_922_488), "timm:mobilenetv3_small_050": (288, 272_288)}


def _one_step(model, x, y) -> None:
    counts = [20, 10, 5]
    method = get_method(model.method)
    loss_fn = method.loss(
        method.first_phase, torch.tensor(counts), class_weights(counts), TrainConfig(), model
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    step = TrainStep(model, loss_fn, opt, torch.device("cpu"), False, False, method.step_mode)
    before = [p.detach().clone() for p in model.parameters()]
    model.train()
    assert torch.isfinite(step(x, y))
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    model.eval()
    assert model(x[:2]).shape == (2, 3)


@pytest.mark.parametrize("backbone", list(MODELS))
def test_every_head_builds_and_trains_a_step(backbone):
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    width, params = MODELS[backbone]
    bb = build_backbone(backbone)  # a fresh one per model below; this one for its facts
    assert bb.out_channels == width and count_parameters(bb) == params
    for head in list_heads():  # with linear branches, and with LDAM's cosine ones
        for method in ("weighted", "ldam_drw"):
            _one_variant(create_model(variant_name(head, method), 3, backbone=backbone), bb, x, y)


def _one_variant(model, bb, x, y) -> None:
    width = bb.out_channels
    assert model.feature_channels == width
    groups = model.layer_groups()
    names = [n for n, _ in model.named_parameters()]
    assert sorted(n for g in groups.values() for n in g) == sorted(names)  # a partition
    assert list(groups)[: len(bb.stage_names())] == bb.stage_names()
    _one_step(model, x, y)


def test_stages_by_hand():
    # resnet10t: the stem (conv1.*, bn1) feeds act1, the first feature point
    r = build_backbone("timm:resnet10t")
    assert r.stage_names() == ["act1", "layer1", "layer2", "layer3", "layer4"]
    assert r.stage_of("net.conv1.0.weight") == "act1" and r.stage_of("net.bn1.weight") == "act1"
    assert r.stage_of("net.layer3.0.conv1.weight") == "layer3"
    # mobilenetv3: feature points after bn1 and blocks 0, 1, 3, 5; blocks 2 and 4 belong to
    # the next point
    m = build_backbone("timm:mobilenetv3_small_050")
    assert m.stage_names() == ["bn1", "blocks.0", "blocks.1", "blocks.3", "blocks.5"]
    assert m.stage_of("net.conv_stem.weight") == "bn1"
    assert m.stage_of("net.blocks.2.0.conv_pw.weight") == "blocks.3"
    assert m.stage_of("net.blocks.4.0.conv_pw.weight") == "blocks.5"
    # the head sits on the last feature stage, not forward_features (efficientnet: 320 vs 1280)
    assert build_backbone("timm:efficientnet_b0").out_channels == 320


def test_pretrained_safetensors_of_the_classifier_or_the_features_model(tmp_path):
    torch.manual_seed(1)
    full = timm.create_model("resnet10t")  # timm's classifier: fc.* are dropped
    save_file(full.state_dict(), str(tmp_path / "full.safetensors"))
    save_file(full.state_dict(), str(tmp_path / "full.st"))  # any name: read as safetensors
    bb = build_backbone("timm:resnet10t")
    rec = load_pretrained(bb, str(tmp_path / "full.safetensors"))
    assert rec["weights"].endswith("full.safetensors")
    ref = full.state_dict()
    for k, v in bb.net.state_dict().items():
        assert torch.equal(v, ref[k]), k
    # the features model's own state dict (convnext's flattened names: stem_0, stages_0)
    src = build_backbone("timm:convnext_atto")
    save_file(src.net.state_dict(), str(tmp_path / "feat.safetensors"))
    dst = build_backbone("timm:convnext_atto")
    load_pretrained(dst, str(tmp_path / "feat.safetensors"))
    assert all(
        torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values())
    )
    with pytest.raises(BackboneError, match="does not fit timm:mobilenetv3_small_050"):
        load_pretrained(
            build_backbone("timm:mobilenetv3_small_050"), str(tmp_path / "full.safetensors")
        )
    (tmp_path / "bad.safetensors").write_bytes(b"\x80\x04 a pickle")
    with pytest.raises(BackboneError, match="not a readable safetensors file"):
        load_pretrained(bb, str(tmp_path / "bad.safetensors"))


def test_refusals_are_one_line():
    from timm.models import register_model

    @register_model
    def csba_test_no_features(pretrained=False, **kwargs):  # a model timm cannot wrap
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1))

    for name, says in (
        ("timm:csba_test_no_features", "does not build with features_only"),
        ("timm:no_such_model_xyz", "unknown timm model"),
    ):
        with pytest.raises(BackboneError, match=says) as e:
            build_backbone(name)
        assert "\n" not in str(e.value)
    vit = build_backbone("timm:vit_tiny_patch16_224")
    with pytest.raises(BackboneError, match="does not take 128px images") as e:
        vit.check_input(128)
    assert "\n" not in str(e.value)
    vit.check_input(224)
    assert run_dir_for("c", "elpv", "csba", 1, 128, "timm:resnet10t").name == (
        "csba-timm-resnet10t-s1"
    )


def _csba(*args, env=None, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "csba", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


@pytest.mark.slow
def test_imagenet_without_network_is_one_line(tiny_folder, tmp_path):
    r = _csba(
        "train", "--dataset", "imagefolder", "--data-root", tiny_folder, "--image-size", 32,
        "--epochs", 1, "--backbone", "timm:resnet10t", "--pretrained", "imagenet",
        "--out", tmp_path,
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")},
    )  # fmt: skip
    assert r.returncode == 2 and r.stdout == ""
    lines = [ln for ln in r.stderr.strip().splitlines() if "unreadable image" not in ln]
    assert len(lines) == 1 and "cannot fetch timm's ImageNet weights" in lines[0], r.stderr
    assert "--pretrained PATH.safetensors" in lines[0]
    assert not list(tmp_path.rglob("run.json"))


@pytest.mark.slow
def test_a_timm_run_trains_evaluates_and_diagnoses(tiny_folder, tmp_path):
    r = _csba(
        "train", "--dataset", "imagefolder", "--data-root", tiny_folder, "--image-size", 32,
        "--epochs", 1, "--variant", "csba", "--backbone", "timm:mobilenetv3_small_050",
        "--out", tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    run = tmp_path / "imagefolder-32px" / "csba-timm-mobilenetv3_small_050-s0"
    meta = json.loads((run / "run.json").read_text())
    assert meta["backbone"]["name"] == "timm:mobilenetv3_small_050"
    assert meta["backbone"]["feature_channels"] == 288
    assert _csba("evaluate", run).returncode == 0
    assert _csba("diagnose", run, "--per-class", 4).returncode == 0
    diag = json.loads((run / "run.json").read_text())["diagnostics"]
    stages = ["bn1", "blocks.0", "blocks.1", "blocks.3", "blocks.5"]
    assert list(diag["layers"])[: len(stages)] == stages
    assert all(len(diag["layers"][s]["matrix"]) == 3 for s in stages)
    # Captum's maps on an image (Grad-CAM on the last feature stage) and a per-branch one
    from PIL import Image

    from csba.attributions import explain_image
    from csba.store import load_run

    loaded = load_run(run)
    png = next(p for p in sorted(tiny_folder.rglob("*.png")) if p.name != "broken.png")
    ex = explain_image(loaded.model, loaded.meta, Image.open(png))
    assert {"gradcam", "integrated_gradients"} <= set(ex.maps)
    assert all(m.shape == (32, 32) and np.isfinite(m).all() for m in ex.maps.values())


@pytest.mark.slow
def test_train_from_a_local_safetensors_file(tiny_folder, tmp_path):
    torch.manual_seed(2)
    src = build_backbone("timm:mobilenetv3_small_050")
    save_file(src.net.state_dict(), str(tmp_path / "mnv3.safetensors"))
    r = _csba(
        "train", "--dataset", "imagefolder", "--data-root", tiny_folder, "--image-size", 32,
        "--epochs", 1, "--variant", "baseline", "--backbone", "timm:mobilenetv3_small_050",
        "--pretrained", tmp_path / "mnv3.safetensors", "--out", tmp_path / "runs",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    run = next((tmp_path / "runs").rglob("run.json")).parent
    assert run.name == "baseline-timm-mobilenetv3_small_050-pretrained-s0"
    meta = json.loads((run / "run.json").read_text())
    assert meta["backbone"]["pretrained"]["weights"].endswith("mnv3.safetensors")


def test_timm_is_imported_only_when_a_timm_backbone_is_built():
    code = (
        "import sys, csba, csba.models, csba.cli; from csba.backbones import build_backbone; "
        "build_backbone('resnet18'); print('timm' in sys.modules); "
        "build_backbone('timm:resnet10t'); print('timm' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.stdout.split() == ["False", "True"], r.stderr
