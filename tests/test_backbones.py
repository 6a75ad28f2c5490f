"""Backbones: every variant on every listed backbone builds and trains a step; pretrained
weights from a local safetensors file round-trip; ImageNet weights without network fail in one
line; layer groups come from the backbone's stages; run folders never collide."""

import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from csba.backbones import BackboneError, build_backbone, list_backbones, load_pretrained
from csba.config import TrainConfig
from csba.losses import class_weights
from csba.methods import get_method
from csba.models import count_parameters, create_model, list_models
from csba.step import TrainStep
from csba.store import run_dir_for

FEATURES = {
    "trifire": 768,
    "resnet18": 512,
    "resnet50": 2048,
    "mobilenet_v3_large": 960,
    "efficientnet_b0": 1280,
    "convnext_tiny": 768,
}


def test_the_listed_backbones():
    assert list_backbones() == list(FEATURES)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", list(FEATURES))
def test_every_variant_builds_and_trains_a_step(backbone):
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    counts = [20, 10, 5]
    for variant in list_models():
        model = create_model(variant, 3, backbone=backbone)
        assert model.feature_channels == FEATURES[backbone]
        groups = model.layer_groups()
        names = [n for n, _ in model.named_parameters()]
        assert sorted(n for g in groups.values() for n in g) == sorted(names)  # a partition
        stages = model.backbone.stage_names()
        assert list(groups)[: len(stages)] == stages and "heads" in groups
        method = get_method(model.method)  # the preset's loss, as training builds it
        loss_fn = method.loss(
            method.first_phase, torch.tensor(counts), class_weights(counts), TrainConfig(), model
        )
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        step = TrainStep(
            model,
            loss_fn,
            opt,
            torch.device("cpu"),
            bf16=False,
            graph=False,
            mode=method.step_mode,
        )
        before = [p.detach().clone() for p in model.parameters()]
        model.train()
        loss = step(x, y)
        assert torch.isfinite(loss), (backbone, variant)
        moved = sum(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
        assert moved > 0, (backbone, variant)
        model.eval()
        assert model(x[:2]).shape == (2, 3)


def test_torchvision_stages_follow_resolution():
    assert build_backbone("resnet18").stage_names() == [
        "stem",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
    ]
    assert build_backbone("convnext_tiny").stage_names() == [
        "stem",
        "stage1",
        "stage2",
        "stage3",
        "stage4",
    ]
    mb = build_backbone("mobilenet_v3_large")
    assert mb.stage_names() == ["stem", "stage1", "stage2", "stage3", "stage4", "stage5"]
    assert mb.stage_of("features.16.0.weight") == "stage5"  # the last 1x1 conv, at 1/32


def test_pretrained_path_round_trips(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(3)
    ref = resnet18()
    save_file(ref.state_dict(), str(tmp_path / "r18.safetensors"))  # fc.* included: ignored
    bb = build_backbone("resnet18")
    rec = load_pretrained(bb, str(tmp_path / "r18.safetensors"))
    assert rec["source"].endswith("r18.safetensors")
    for k, v in bb.state_dict().items():
        assert torch.equal(v, ref.state_dict()[k]), k
    # the whole path: a run trained from it records where its weights came from
    with pytest.raises(BackboneError, match="does not fit mobilenet_v3_large"):
        load_pretrained(build_backbone("mobilenet_v3_large"), str(tmp_path / "r18.safetensors"))
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(BackboneError, match="not a readable safetensors file"):
        load_pretrained(bb, str(tmp_path / "bad.safetensors"))
    with pytest.raises(BackboneError, match="no such file"):
        load_pretrained(bb, str(tmp_path / "missing.safetensors"))
    with pytest.raises(BackboneError, match="trifire has no weights"):
        load_pretrained(build_backbone("trifire"), "imagenet")


@pytest.mark.slow
def test_pretrained_imagenet_without_network_is_one_line(tiny_folder, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "csba",
        "train",
        "--dataset",
        "imagefolder",
        "--data-root",
        str(tiny_folder),
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--backbone",
        "resnet18",
        "--pretrained",
        "imagenet",
        "--out",
        str(tmp_path),
    ]
    env = {"TORCH_HOME": str(tmp_path / "torch"), "PATH": "/usr/bin:/bin"}
    import os

    env = {**os.environ, **env}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    if r.returncode == 0:
        pytest.skip("this machine reached download.pytorch.org")
    assert r.returncode == 2 and r.stdout == ""
    # (the tiny folder's broken image also gets its one-line warning)
    lines = [ln for ln in r.stderr.strip().splitlines() if "unreadable image" not in ln]
    assert len(lines) == 1 and "cannot download torchvision's ImageNet weights" in lines[0]
    assert "--pretrained PATH" in lines[0] and "Downloading" not in r.stderr
    assert not list(tmp_path.rglob("run.json"))


def test_run_folders_name_backbone_and_pretraining():
    assert run_dir_for("c", "elpv", "csba", 0, 128).as_posix() == "c/elpv/csba-s0"
    assert run_dir_for("c", "elpv", "csba", 1, 128, "resnet18").as_posix() == (
        "c/elpv/csba-resnet18-s1"
    )
    assert run_dir_for("c", "elpv", "csba", 1, 224, "resnet18", "imagenet").as_posix() == (
        "c/elpv-224px/csba-resnet18-imagenet-s1"
    )
    assert run_dir_for("c", "elpv", "csba", 1, 128, "resnet18", "/w.safetensors").name == (
        "csba-resnet18-pretrained-s1"
    )


def test_parameter_counts_at_four_classes():
    # trifire counts are the shipped ELPV runs' (docs/design.md §1)
    assert count_parameters(create_model("baseline", 4)) == 1_345_612
    assert count_parameters(create_model("csba", 4)) == 1_787_980
    r18 = count_parameters(build_backbone("resnet18"))
    assert count_parameters(create_model("baseline", 4, backbone="resnet18")) == r18 + 3 * (
        512 * 4 + 4
    )
