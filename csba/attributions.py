"""Attributions for one image (docs/design.md §7, Attributions page), with Captum.

* :func:`explain`: Integrated Gradients, Saliency and Grad-CAM on the last backbone layer
  (``model.backbone.fire8``), plus a Grad-CAM per branch for models with attention (csba: branch
  k's logit for the target; class_heads: the target class's own head). Every map is (S, S),
  finite and scaled to [0, 1]: Integrated Gradients and Saliency as Captum's visualiser does
  (:func:`clip_map`: |attribution| divided by the value below which 98% of its total lies, then
  clipped at 1), Grad-CAM by its maximum (:func:`normalise_map`).
* :func:`image_report`: class probabilities, per-branch logits, this image's per-branch attention
  and the overlap between branches (reusing :func:`csba.diagnostics.attention_for_image`).
* :func:`prepare_image` / :func:`explain_image`: a PIL image -> the exact input a run's model sees
  (its size, grey or colour, its normalisation) -> report + maps + overlays, for the dashboard.
* :func:`overlay`: a heat map blended over an image with a colour map.

Every function that runs the model puts it in eval mode, computes in float32, restores each
submodule's train/eval flag and leaves no ``.grad`` behind.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from .data import normalize, preprocess_image
from .diagnostics import attention_for_image
from .diagnostics._utils import eval_mode, float32_compute, model_device

__all__ = [
    "METHODS",
    "ImageExplanation",
    "PreparedImage",
    "branch_labels",
    "clip_map",
    "explain",
    "explain_image",
    "image_report",
    "integrated_gradients",
    "method_label",
    "normalise_map",
    "overlay",
    "prepare_image",
]

METHODS = ("integrated_gradients", "saliency", "gradcam")
DEFAULT_IG_STEPS = 32  # Gauss-Legendre steps; completeness error is reported by Captum
IG_INTERNAL_BATCH = 8  # interpolation steps per forward+backward (memory, see integrated_gradients)
OUTLIER_PERC = 2  # Captum visualize_image_attr's default: the top 2% of |attribution| saturate
_LABELS = {
    "integrated_gradients": "Integrated Gradients",
    "saliency": "Saliency |d logit / d x|",
    "gradcam": "Grad-CAM (backbone output Z)",  # fire8 on trifire, the last stage otherwise
}


# ---- guards ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _analysis_mode(model: nn.Module) -> Iterator[torch.device]:
    """Eval mode and float32; each submodule's flag and every parameter's ``.grad`` restored.

    Parameters keep their ``requires_grad`` (the model may be shared with other threads): Captum
    differentiates with ``torch.autograd.grad`` with respect to the input only, so no weight
    gradient is computed or stored.
    """
    grads = [(p, p.grad) for p in model.parameters()]
    device = model_device(model)
    try:
        with eval_mode(model), float32_compute(device), torch.enable_grad():
            yield device
    finally:
        for p, g in grads:
            if p.grad is not g:
                p.grad = g


def _as_batch(x: Tensor, device: torch.device) -> Tensor:
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise TypeError("x must be a float tensor (1, 3, S, S), normalised the way the run was")
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"expected one image (1, 3, S, S), got shape {tuple(x.shape)}")
    return x.detach().to(device=device, dtype=torch.float32).clone().requires_grad_(True)


def _clean(heat: Tensor | np.ndarray) -> np.ndarray:
    h = heat.detach().double().cpu().numpy() if torch.is_tensor(heat) else np.asarray(heat)
    return np.nan_to_num(h.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)


def normalise_map(heat: Tensor | np.ndarray) -> np.ndarray:
    """Non-negative map -> float32 numpy in [0, 1] (divided by its max; all-zero stays zero).

    Used for Grad-CAM: a coarse (here 8 x 8 upsampled) ReLU'd map whose maximum is a region,
    not a single pixel, so max scaling already spreads it (Captum's LayerGradCam examples show
    it the same way). Pixel-level maps (IG, Saliency) use :func:`clip_map`.
    """
    h = np.clip(_clean(heat), 0.0, None)
    top = float(h.max()) if h.size else 0.0
    return (h / top if top > 0 else np.zeros_like(h)).astype(np.float32)


def clip_map(heat: Tensor | np.ndarray, outlier_perc: float = OUTLIER_PERC) -> np.ndarray:
    """Pixel attribution (H, W) -> float32 in [0, 1], scaled as Captum's visualiser does.

    Captum ``captum.attr._utils.visualization._normalize_attr(attr, "absolute_value",
    outlier_perc)``: |attr| divided by the threshold where the cumulative sum of the sorted
    values reaches (100 - outlier_perc)% of the total, clipped to 1. On photographs a few
    pixels carry gradients orders of magnitude above the rest; dividing by the single largest
    value (:func:`normalise_map`) then leaves the map almost black. All-zero stays zero.
    """
    h = np.abs(_clean(heat))
    if h.size == 0 or not (h > 0).any():
        return np.zeros_like(h, dtype=np.float32)
    try:
        from captum.attr._utils.visualization import _normalize_attr
    except ImportError:  # Captum's private helper moved: the same computation
        _normalize_attr = None
    if _normalize_attr is not None:
        with warnings.catch_warnings():  # "values approximately 0" on tiny (but valid) maps
            warnings.simplefilter("ignore")
            out = _normalize_attr(h, "absolute_value", outlier_perc)
    else:
        v = np.sort(h.ravel())
        c = np.cumsum(v)
        threshold = v[np.flatnonzero(c >= c[-1] * 0.01 * (100.0 - outlier_perc))[0]]
        out = np.clip(h / threshold, -1.0, 1.0)
    return np.clip(np.asarray(out, dtype=np.float64), 0.0, 1.0).astype(np.float32)


# ---- model views -----------------------------------------------------------------------------


def branch_labels(model: nn.Module, classes: Sequence[str] | None = None) -> list[str]:
    """Names of the model's branches: 'branch 1..K', or 'head <class>' for class_heads."""
    if getattr(model, "head", "") == "class_heads":
        n = len(model.heads)
        names = list(classes) if classes is not None and len(classes) == n else range(n)
        return [f"head {c}" for c in names]
    return [f"branch {k + 1}" for k in range(model.num_branches)]


def method_label(key: str, classes: Sequence[str] | None = None) -> str:
    """Human-readable title of a key returned by :func:`explain`."""
    if key in _LABELS:
        return _LABELS[key]
    if key.startswith("gradcam_branch"):
        return f"Grad-CAM, branch {int(key.removeprefix('gradcam_branch')) + 1}"
    if key.startswith("gradcam_head"):
        c = int(key.removeprefix("gradcam_head"))
        name = classes[c] if classes is not None and c < len(classes) else str(c)
        return f"Grad-CAM, head of '{name}'"
    return key


# ---- attributions ----------------------------------------------------------------------------


def integrated_gradients(
    model: nn.Module,
    x: Tensor,
    target: int,
    *,
    steps: int = DEFAULT_IG_STEPS,
    baseline: Tensor | None = None,
) -> tuple[Tensor, float]:
    """Captum Integrated Gradients of logit ``target`` and its convergence delta.

    The baseline defaults to zeros in normalised space, i.e. the training split's mean image.
    Returns attributions (1, 3, S, S) on the CPU and delta = sum(attr) - (f(x) - f(baseline)).
    """
    from captum.attr import IntegratedGradients

    with _analysis_mode(model) as device:
        xb = _as_batch(x, device)
        base = torch.zeros_like(xb) if baseline is None else _as_batch(baseline, device)
        attr, delta = IntegratedGradients(model).attribute(
            xb,
            baselines=base,
            target=int(target),
            n_steps=int(steps),
            # 8 interpolated images per forward+backward: peak memory +165 MiB against +560 MiB
            # at 32 (csba, 128 px, CPU), and no slower on a CPU.
            internal_batch_size=min(int(steps), IG_INTERNAL_BATCH),
            return_convergence_delta=True,
        )
    return attr.detach().cpu(), float(delta.detach().abs().max())


def _gradcam(model: nn.Module, z: Tensor, pick, target: int, size: tuple[int, int]) -> Tensor:
    """Captum ``LayerGradCam`` on the backbone output Z (= ``model.backbone.fire8``'s output).

    The layer hooked is a private ``nn.Identity`` through which Z enters the head, not the shared
    model's ``fire8`` module: the result is the same (fire8 is the backbone's last layer) but no
    hook is ever attached to a model that other sessions of the dashboard may be running.
    """
    from captum.attr import LayerAttribution, LayerGradCam

    gate = nn.Identity()

    def head(zz: Tensor) -> Tensor:
        return pick(model.head_parts(gate(zz)))

    cam = LayerGradCam(head, gate).attribute(z, target=target, relu_attributions=True)
    return LayerAttribution.interpolate(cam.detach(), size, interpolate_mode="bilinear")[0, 0]


def _fused(parts) -> Tensor:
    return parts.logits


def _branch(k: int):
    def pick(parts) -> Tensor:
        return parts.branch_logits[k]

    return pick


def explain(
    model: nn.Module,
    x: Tensor,
    target: int,
    methods: Sequence[str] = METHODS,
    *,
    ig_steps: int = DEFAULT_IG_STEPS,
    branches: bool = True,
) -> dict[str, np.ndarray]:
    """Attribution maps of class ``target`` for one normalised image x (1, 3, S, S).

    Returns method -> (S, S) float32 map in [0, 1]:

    * ``integrated_gradients``: |sum over channels| of Captum IG (baseline: the mean image),
      scaled by :func:`clip_map` (Captum's visualiser: the top 2% saturate).
    * ``saliency``: max over channels of |d logit_target / d x| (Captum ``Saliency``), scaled
      by :func:`clip_map`.
    * ``gradcam``: Captum ``LayerGradCam`` on the output of ``model.backbone.fire8`` (the last
      backbone layer, Z), ReLU'd, upsampled (bilinear) to S x S and divided by its maximum.
    * with ``branches`` and a model with attention, also ``gradcam_branch<k>`` (csba: branch k's
      logit for the target) or ``gradcam_head<target>`` (class_heads: the target class's head).
    """
    from captum.attr import Saliency

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    target = int(target)
    num_classes = int(getattr(model, "num_classes", 0)) or None
    if num_classes is not None and not 0 <= target < num_classes:
        raise ValueError(f"target {target} is not a class index in [0, {num_classes})")
    out: dict[str, np.ndarray] = {}
    if "integrated_gradients" in methods:
        attr, _ = integrated_gradients(model, x, target, steps=ig_steps)
        out["integrated_gradients"] = clip_map(attr[0].sum(0))
    with _analysis_mode(model) as device:
        xb = _as_batch(x, device)
        size = (xb.shape[2], xb.shape[3])
        if "saliency" in methods:
            sal = Saliency(model).attribute(xb, target=target, abs=True)
            out["saliency"] = clip_map(sal[0].amax(0))
        if "gradcam" in methods:
            with torch.no_grad():
                z = model.forward_features(xb)
                parts = model.head_parts(z)
            z = z.detach().requires_grad_(True)
            out["gradcam"] = normalise_map(_gradcam(model, z, _fused, target, size))
            if branches and parts.attention is not None:
                if getattr(model, "head", "") == "class_heads":
                    cam = _gradcam(model, z, _branch(target), 0, size)
                    out[f"gradcam_head{target}"] = normalise_map(cam)
                else:
                    for k in range(len(parts.branch_logits)):
                        cam = _gradcam(model, z, _branch(k), target, size)
                        out[f"gradcam_branch{k}"] = normalise_map(cam)
    return out


# ---- per-image report ------------------------------------------------------------------------


def image_report(model: nn.Module, x: Tensor, classes: Sequence[str]) -> dict:
    """Prediction and branch view of one image x (1, 3, S, S).

    Keys: ``classes``, ``probs`` (C,), ``logits`` (C,), ``pred`` (index), ``branch_labels``,
    ``branch_logits`` (K x C, or K x 1 for class_heads), ``attention`` (K x 768 or None),
    ``jaccard`` / ``cosine`` (K x K branch overlap of this image's attention, top-10% channels;
    None without attention). Arrays are float64 numpy.
    """
    with _analysis_mode(model) as device:
        xb = _as_batch(x, device)
        with torch.no_grad():
            out = model.forward_parts(xb)
        logits = out.logits[0].double().cpu()
        branch = torch.stack([b[0].double().cpu() for b in out.branch_logits]).numpy()
    if len(classes) != logits.shape[0]:
        raise ValueError(f"{len(classes)} class names for a model with {logits.shape[0]} outputs")
    att = attention_for_image(model, xb)
    return {
        "classes": list(classes),
        "probs": torch.softmax(logits, 0).numpy(),
        "logits": logits.numpy(),
        "pred": int(logits.argmax()),
        "branch_labels": branch_labels(model, classes),
        "branch_logits": branch,
        "attention": None if att is None else att.attention,
        "jaccard": None if att is None else att.jaccard,
        "cosine": None if att is None else att.cosine,
    }


# ---- dashboard helpers -----------------------------------------------------------------------


@dataclass
class PreparedImage:
    """An image as one run's model sees it.

    pixels: uint8 (S, S, 3) for display (grey repeated); x: float32 (1, 3, S, S) model input.
    """

    pixels: np.ndarray
    x: Tensor
    image_size: int
    channels: int


def prepare_image(image: Image.Image, dataset: dict) -> PreparedImage:
    """Resize (and grey, for grey datasets) and normalise like the run's dataset cache.

    ``dataset`` is run.json's ``dataset``: ``image_size``, ``channels``, ``mean``, ``std``.
    """
    size = int(dataset["image_size"])
    channels = int(dataset.get("channels", 3))
    u8 = preprocess_image(image, size, channels)  # (c, S, S)
    x = normalize(u8[None], dataset["mean"], dataset["std"])
    pixels = u8.permute(1, 2, 0).numpy()
    if channels == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    return PreparedImage(np.ascontiguousarray(pixels), x, size, channels)


@dataclass
class ImageExplanation:
    """Everything the Attributions page shows for one run and one image."""

    pixels: np.ndarray  # uint8 (S, S, 3): the model's view
    target: int
    report: dict  # see image_report
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # key -> (S, S) in [0, 1]
    overlays: dict[str, np.ndarray] = field(default_factory=dict)  # key -> uint8 (S, S, 3)
    titles: dict[str, str] = field(default_factory=dict)  # key -> human-readable title


def explain_image(
    model: nn.Module,
    meta: dict,
    image: Image.Image,
    target: int | None = None,
    *,
    methods: Sequence[str] = METHODS,
    ig_steps: int = DEFAULT_IG_STEPS,
) -> ImageExplanation:
    """Prepare ``image`` for the run (``meta`` = run.json), report and explain it.

    ``target`` None explains the predicted class.
    """
    classes = list(meta["classes"])
    prepared = prepare_image(image, meta["dataset"])
    report = image_report(model, prepared.x, classes)
    t = report["pred"] if target is None else int(target)
    maps = explain(model, prepared.x, t, methods, ig_steps=ig_steps)
    return ImageExplanation(
        pixels=prepared.pixels,
        target=t,
        report=report,
        maps=maps,
        overlays={k: overlay(prepared.pixels, v) for k, v in maps.items()},
        titles={k: method_label(k, classes) for k in maps},
    )


def _colormap(name: str) -> np.ndarray:
    """(256, 3) uint8 lookup table of a matplotlib colour map (a captum dependency)."""
    try:
        from matplotlib import colormaps

        lut = colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3]
    except (ImportError, KeyError):  # plain black -> red -> yellow -> white ramp
        t = np.linspace(0.0, 1.0, 256)
        lut = np.stack([np.clip(3 * t, 0, 1), np.clip(3 * t - 1, 0, 1), np.clip(3 * t - 2, 0, 1)])
        lut = lut.T
    return np.round(lut * 255).astype(np.uint8)


def overlay(
    image: np.ndarray, heat: np.ndarray, *, alpha: float = 0.6, cmap: str = "jet"
) -> np.ndarray:
    """Blend a [0, 1] heat map over an image (H x W x 3, H x W x 1 or H x W uint8).

    Each pixel takes ``alpha * heat`` of the colour map, so where the map is 0 the image shows
    unchanged and the strongest evidence is the most coloured. (Captum's ``blended_heat_map``
    lays the colour map at a constant alpha 0.5 over a grey copy, tinting zero-evidence pixels
    too; weighting by the map keeps the image readable where there is no evidence.) The map is
    resized (bilinear) to the image when their sizes differ. Returns uint8 H x W x 3.
    """
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise ValueError(f"image must be H x W, H x W x 1, 3 or 4; got shape {img.shape}")
    img = img[:, :, :3]
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    img = img.astype(np.float64)
    h = np.nan_to_num(np.asarray(heat, dtype=np.float64), nan=0.0)
    if h.shape != img.shape[:2]:
        pil = Image.fromarray(h.astype(np.float32), mode="F")
        h = np.asarray(pil.resize((img.shape[1], img.shape[0]), Image.Resampling.BILINEAR))
    h = np.clip(h, 0.0, 1.0)
    colour = _colormap(cmap)[np.round(h * 255).astype(np.int64)].astype(np.float64)
    w = alpha * h[:, :, None]
    out = (1.0 - w) * img + w * colour
    return np.clip(np.round(out), 0, 255).astype(np.uint8)
