"""csba.attributions: Captum maps, the per-image report, overlays and image preparation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import LayerAttribution, LayerGradCam
from PIL import Image

from csba import create_model, list_models
from csba.attributions import (
    METHODS,
    explain,
    explain_image,
    image_report,
    integrated_gradients,
    method_label,
    overlay,
    prepare_image,
)
from csba.data import normalize, preprocess_image
from csba.store import load_run

S = 32
WITH_ATTENTION = {"csba", "class_heads"}


def _model(variant: str, num_classes: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    model = create_model(variant, num_classes).eval()
    # A few BatchNorm statistics away from their init so the maps are not trivially flat.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def _image(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 3, S, S, generator=g)


@pytest.mark.parametrize("variant", list_models())
def test_maps_have_image_shape_are_finite_and_in_unit_range(variant):
    model = _model(variant)
    maps = explain(model, _image(), target=1, ig_steps=8)
    assert set(METHODS) <= set(maps)
    for key, heat in maps.items():
        assert heat.shape == (S, S), key
        assert heat.dtype == np.float32
        assert np.isfinite(heat).all(), key
        assert heat.min() >= 0.0 and heat.max() <= 1.0, key
        assert method_label(key) != key or key not in METHODS
    assert maps["saliency"].max() == pytest.approx(1.0)


@pytest.mark.parametrize("variant", list_models())
def test_per_branch_gradcam_only_for_models_with_attention(variant):
    model = _model(variant)
    keys = set(explain(model, _image(), target=2, methods=("gradcam",)))
    branch_keys = keys - {"gradcam"}
    if variant == "csba":
        assert branch_keys == {"gradcam_branch0", "gradcam_branch1", "gradcam_branch2"}
    elif variant == "class_heads":
        assert branch_keys == {"gradcam_head2"}  # the target class's own head
    else:
        assert branch_keys == set()
    assert explain(model, _image(), target=2, methods=("saliency",)).keys() == {"saliency"}


def test_saliency_equals_abs_input_gradient_max_over_channels():
    model = _model("csba")
    x = _image(3)
    target = 0
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(xg)[0, target], xg)
    expected = grad.abs()[0].amax(0)
    expected = (expected / expected.max()).numpy()
    got = explain(model, x, target, methods=("saliency",))["saliency"]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", ["baseline", "csba"])
def test_integrated_gradients_completeness(variant):
    model = _model(variant)
    x = _image(4)
    target = 1
    attr, delta = integrated_gradients(model, x, target, steps=128)
    with torch.no_grad():
        gap = float(model(x)[0, target] - model(torch.zeros_like(x))[0, target])
    # Completeness: the attributions sum to f(x) - f(baseline); Captum's delta measures the miss.
    assert abs(float(attr.sum()) - gap) == pytest.approx(delta, abs=1e-4)
    assert delta <= 0.02 * max(1.0, abs(gap))
    assert attr.shape == (1, 3, S, S) and attr.dtype == torch.float32


def test_gradcam_is_captum_layer_gradcam_on_fire8():
    model = _model("csba")
    x = _image(5)
    ref = LayerGradCam(model, model.backbone.fire8).attribute(
        x.clone().requires_grad_(True), target=2, relu_attributions=True
    )
    ref = LayerAttribution.interpolate(ref.detach(), (S, S), interpolate_mode="bilinear")[0, 0]
    ref = ref / ref.max() if ref.max() > 0 else ref
    got = explain(model, x, 2, methods=("gradcam",))["gradcam"]
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-5, atol=1e-6)
    assert not model.backbone.fire8._forward_hooks  # no hook left behind


def test_mode_and_gradients_restored():
    model = _model("csba")
    model.train()
    model.gates[0].eval()  # a mixed state must come back exactly
    modes = {name: m.training for name, m in model.named_modules()}
    marker = torch.ones_like(model.branches[0].weight)
    model.branches[0].weight.grad = marker
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    explain(model, _image(), target=0, ig_steps=4)
    image_report(model, _image(), ["a", "b", "c"])
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert model.branches[0].weight.grad is marker
    assert all(p.grad is None for n, p in model.named_parameters() if n != "branches.0.weight")


def test_explain_rejects_bad_input():
    model = _model("baseline")
    with pytest.raises(ValueError, match="target 3"):
        explain(model, _image(), target=3)
    with pytest.raises(ValueError, match="one image"):
        explain(model, torch.randn(2, 3, S, S), target=0)
    with pytest.raises(TypeError, match="float"):
        explain(model, torch.zeros(1, 3, S, S, dtype=torch.uint8), target=0)
    with pytest.raises(ValueError, match="unknown method"):
        explain(model, _image(), target=0, methods=("lime",))


@pytest.mark.parametrize("variant", ["baseline", "csba", "class_heads", "gradnorm"])
def test_image_report(variant):
    model = _model(variant, num_classes=4)
    x = _image(6)
    classes = ["a", "b", "c", "d"]
    r = image_report(model, x, classes)
    with torch.no_grad():
        out = model.forward_parts(x)
    np.testing.assert_allclose(r["logits"], out.logits[0].double().numpy(), atol=1e-6)
    assert r["probs"].sum() == pytest.approx(1.0)
    assert r["pred"] == int(np.argmax(r["probs"]))
    if variant == "class_heads":
        assert r["branch_logits"].shape == (4, 1)
        assert r["branch_labels"] == [f"head {c}" for c in classes]
        np.testing.assert_allclose(r["branch_logits"][:, 0], r["logits"], atol=1e-6)
    else:
        assert r["branch_logits"].shape == (3, 4)
        assert r["branch_labels"] == ["branch 1", "branch 2", "branch 3"]
    if variant == "baseline":
        np.testing.assert_allclose(r["branch_logits"].sum(0), r["logits"], atol=1e-5)
    if variant in WITH_ATTENTION:
        k = r["branch_logits"].shape[0]
        assert r["attention"].shape == (k, 768)
        assert r["jaccard"].shape == (k, k) and r["cosine"].shape == (k, k)
        np.testing.assert_allclose(np.diag(r["jaccard"]), 1.0)
    else:
        assert r["attention"] is None and r["jaccard"] is None and r["cosine"] is None
    with pytest.raises(ValueError, match="class names"):
        image_report(model, x, ["only", "three", "names"])


def test_overlay():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (S, S, 3), dtype=np.uint8)
    heat = rng.random((S, S))
    out = overlay(img, heat)
    assert out.shape == (S, S, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(overlay(img, heat, alpha=0.0), img)
    assert not np.array_equal(out, img)
    small = overlay(img, rng.random((8, 8)))  # the map is resized to the image
    assert small.shape == (S, S, 3)
    grey = overlay(img[:, :, 0], heat)
    assert grey.shape == (S, S, 3)
    nan_heat = np.full((S, S), np.nan)
    np.testing.assert_array_equal(overlay(img, nan_heat), img)  # no evidence: image unchanged
    np.testing.assert_array_equal(overlay(img, np.zeros((S, S))), img)
    with pytest.raises(ValueError, match="image must be"):
        overlay(np.zeros((S, S, 2), np.uint8), heat)


@pytest.mark.parametrize("channels", [1, 3])
def test_prepare_image_matches_the_dataset_path(channels):
    rng = np.random.default_rng(1)
    pil = Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8))
    meta = {
        "image_size": 24,
        "channels": channels,
        "mean": [0.4] * channels,
        "std": [0.2] * channels,
    }
    p = prepare_image(pil, meta)
    u8 = preprocess_image(pil, 24, channels)
    assert p.pixels.shape == (24, 24, 3) and p.pixels.dtype == np.uint8
    torch.testing.assert_close(p.x, normalize(u8[None], meta["mean"], meta["std"]))
    assert p.x.shape == (1, 3, 24, 24)
    if channels == 1:
        assert (p.pixels[:, :, 0] == p.pixels[:, :, 2]).all()


@pytest.mark.parametrize("variant", ["baseline", "csba", "class_heads"])
def test_explain_image_on_a_stored_run(tiny_runs, variant):
    run = load_run(tiny_runs[variant])
    pil = Image.fromarray(np.full((40, 40, 3), 128, np.uint8))
    e = explain_image(run.model, run.meta, pil, ig_steps=4)
    size = run.meta["dataset"]["image_size"]
    assert e.pixels.shape == (size, size, 3)
    assert e.target == e.report["pred"]
    assert set(e.maps) == set(e.overlays) == set(e.titles)
    assert all(o.shape == (size, size, 3) for o in e.overlays.values())
    has_branch_maps = any(k.startswith("gradcam_") for k in e.maps)
    assert has_branch_maps == (variant in WITH_ATTENTION)
    chosen = explain_image(run.model, run.meta, pil, target=0, methods=("saliency",))
    assert chosen.target == 0 and set(chosen.maps) == {"saliency"}
    assert not run.model.training
