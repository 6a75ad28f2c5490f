"""Networks by name (docs/design.md §1): the paper's trifire backbone, and the variants a run
names: ten presets (the paper's five and the long-tail methods on the baseline head) and any
``HEAD+METHOD`` combination of a head (csba.heads) and a training method (csba.methods).

A preset is a pair (head, method): ``csba`` is the CSBA head with the paper's weighted
cross-entropy, ``ldam_drw`` the baseline head with LDAM-DRW. A pair that equals a preset takes
the preset's name (:func:`variant_name`); any other is named ``HEAD+METHOD`` (``csba+ldam_drw``:
the CSBA gates in front of LDAM's cosine branches). Use :func:`create_model` and
:func:`list_models`; never instantiate the head classes by hand in callers that take a variant
name from a user.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from . import timm_backbone  # noqa: F401 - registers timm:NAME (timm itself loads lazily)
from .backbones import register_backbone
from .heads import (
    HEADS,
    BaselineNet,
    ClassHeadsNet,
    CSBANet,
    GradNormNet,
    HeadNet,
    HeadOutput,
    get_head,
    list_heads,
)
from .layers import FEATURE_CHANNELS, NEG_SLOPE, NormedLinear, SEGate, conv_bn_act

__all__ = [
    "FEATURE_CHANNELS",
    "NEG_SLOPE",
    "PAPER_VARIANTS",
    "PRESETS",
    "Backbone",
    "BaselineNet",
    "CSBANet",
    "ClassHeadsNet",
    "GradNormNet",
    "HeadNet",
    "HeadOutput",
    "NormedLinear",
    "SEGate",
    "TriFire",
    "check_variant",
    "count_parameters",
    "create_model",
    "gated_variants",
    "list_heads",
    "list_models",
    "model_info",
    "parameter_counts",
    "parse_variant",
    "variant_name",
]

# (name, squeeze, expand per path); out channels = 3 * expand. Pools after fire2 and fire4.
FIRE_SPEC: tuple[tuple[str, int, int], ...] = (
    ("fire1", 16, 64),
    ("fire2", 16, 64),
    ("fire3", 32, 128),
    ("fire4", 32, 128),
    ("fire5", 48, 192),
    ("fire6", 48, 192),
    ("fire7", 64, 256),
    ("fire8", 64, 256),
)
POOL_AFTER = ("fire2", "fire4")


class TriFire(nn.Module):
    """Fire module with three expand paths (1x1, 3x3, 3x3) on one squeezed tensor.

    (B, cin, h, w) -> (B, 3 * expand, h, w).
    """

    def __init__(self, cin: int, squeeze: int, expand: int) -> None:
        super().__init__()
        self.squeeze = conv_bn_act(cin, squeeze, 1)
        self.expand1 = conv_bn_act(squeeze, expand, 1)
        self.expand3a = conv_bn_act(squeeze, expand, 3)
        self.expand3b = conv_bn_act(squeeze, expand, 3)

    def forward(self, x: Tensor) -> Tensor:
        s = self.squeeze(x)
        return torch.cat([self.expand1(s), self.expand3a(s), self.expand3b(s)], dim=1)


class Backbone(nn.Module):
    """Shared tri-path SqueezeNet-style extractor: (B, 3, H, W) -> Z (B, 768, ~H/16, ~W/16)."""

    def __init__(self, in_channels: int = 3, stem_channels: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            conv_bn_act(in_channels, stem_channels, 3, stride=2),
            nn.MaxPool2d(3, stride=2, ceil_mode=True),
        )
        cin = stem_channels
        for name, squeeze, expand in FIRE_SPEC:
            self.add_module(name, TriFire(cin, squeeze, expand))
            cin = 3 * expand
        self.out_channels = cin
        self.pool = nn.MaxPool2d(3, stride=2, ceil_mode=True)

    def stage_names(self) -> list[str]:
        """Layer groups of the per-layer conflict, in forward order: stem, fire1..fire8."""
        return ["stem", *(name for name, _, _ in FIRE_SPEC)]

    def stage_of(self, name: str) -> str:
        """The group of a parameter named relative to the backbone (``fire3.squeeze.0.weight``)."""
        return name.split(".")[0]

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for name, _, _ in FIRE_SPEC:
            x = getattr(self, name)(x)
            if name in POOL_AFTER:
                x = self.pool(x)
        return x


register_backbone("trifire", Backbone)


# ---- presets and HEAD+METHOD variants ---------------------------------------------------------

# name -> (head, method): the ten variant names runs have always used (docs/design.md §1)
PRESETS: dict[str, tuple[str, str]] = {
    "baseline": ("baseline", "weighted"),
    "csba": ("csba", "weighted"),
    "focal": ("baseline", "focal"),
    "gradnorm": ("gradnorm", "weighted"),
    "class_heads": ("class_heads", "weighted"),
    "logit_adjust": ("baseline", "logit_adjust"),
    "ldam_drw": ("baseline", "ldam_drw"),
    "crt": ("baseline", "crt"),
    "pcgrad": ("baseline", "pcgrad"),
    "pcgrad_control": ("baseline", "class_sum"),
}
_BY_PAIR = {pair: name for name, pair in PRESETS.items()}

_DESCRIPTIONS = {
    "baseline": "3 summed branches, Dropout -> Conv1x1, weighted cross-entropy",
    "csba": "baseline + an independent SE attention gate before each branch",
    "focal": "baseline topology trained with focal loss (gamma 2, alpha = class weights)",
    "gradnorm": "baseline with learnable softmax branch weights",
    "class_heads": "one SE-gated Conv3x3 head per class, logits concatenated",
    "logit_adjust": "baseline topology, unweighted CE on logits + log(prior) (Menon et al. 2021)",
    "ldam_drw": "cosine-classifier branches, LDAM margins, deferred re-weighting (Cao et al. 2019)",
    "crt": "baseline trained unweighted, then its heads re-trained class-balanced (Kang 2020)",
    "pcgrad": "baseline topology, PCGrad over per-class mean losses (Yu et al. 2020)",
    "pcgrad_control": "PCGrad's control: the same per-class loss sum without projection",
}
# The variant that isolates what a preset adds (report compares the two); a HEAD+METHOD run's
# control is the baseline head with the same method (what the head adds to the method).
_CONTROLS = {"pcgrad": "pcgrad_control"}

PAPER_VARIANTS = ("baseline", "csba", "focal", "gradnorm", "class_heads")  # the paper's five


def variant_name(head: str, method: str) -> str:
    """The name of head x method: the preset's when the pair is one, else ``HEAD+METHOD``."""
    from .methods import get_method

    get_head(head), get_method(method)  # one-line errors naming the registered ones
    return _BY_PAIR.get((head, method), f"{head}+{method}")


def parse_variant(name: str) -> tuple[str, str]:
    """``(head, method)`` of a preset or ``HEAD+METHOD`` name; ValueError in one line."""
    from .methods import get_method

    if name in PRESETS:
        return PRESETS[name]
    if "+" not in name:
        raise ValueError(
            f"unknown variant {name!r}; choose a preset ({', '.join(PRESETS)}) or HEAD+METHOD"
        )
    head, _, method = name.partition("+")
    get_head(head), get_method(method)
    return head, method


def check_variant(name: str, num_classes: int | None = None) -> tuple[str, str]:
    """``(head, method)`` of ``name`` if it can be trained on ``num_classes`` classes; a
    ValueError naming the reason otherwise (before any data is loaded)."""
    head, method = parse_variant(name)
    spec = get_head(head)
    if num_classes is not None and spec.max_classes and num_classes > spec.max_classes:
        raise ValueError(
            f"head {head!r} is refused above {spec.max_classes} classes ({num_classes} asked): "
            f"{spec.why_limit}; use the baseline or csba head"
        )
    return head, method


def list_models() -> list[str]:
    """Names of the presets: the paper's five, then the long-tail methods."""
    return list(PRESETS)


def gated_variants() -> list[str]:
    """The presets with attention gates (the Attention page's subjects)."""
    return [name for name in PRESETS if is_gated(name)]


def is_gated(name: str) -> bool:
    """Whether variant ``name`` (a preset or HEAD+METHOD) has attention gates to inspect."""
    return get_head(parse_variant(name)[0]).cls.gated


def create_model(name: str, num_classes: int, **kwargs) -> HeadNet:
    """Build variant ``name`` (a preset or HEAD+METHOD) for ``num_classes`` classes: its head
    on the backbone in kwargs (default trifire), with the classifier its method needs; kwargs
    override the pinned defaults."""
    from .methods import get_method

    head, method = check_variant(name, num_classes)
    model = get_head(head).cls(num_classes, **{**get_method(method).head_kwargs(), **kwargs})
    model.variant, model.method = variant_name(head, method), method
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def parameter_counts(num_classes: int, backbones: list[str] | None = None) -> dict:
    """Trainable parameters of every preset on every backbone at ``num_classes``:
    ``{backbone: {variant: count}}`` (default: every listed backbone; a preset whose head is
    refused at ``num_classes`` is left out). Built on PyTorch's meta device, so no memory is
    used and nothing is initialised."""
    from .backbones import list_backbones

    out: dict[str, dict[str, int]] = {}
    with torch.device("meta"):
        for b in backbones or list_backbones():
            out[b] = {}
            for v in PRESETS:
                try:
                    out[b][v] = count_parameters(create_model(v, num_classes, backbone=b))
                except ValueError:
                    continue
    return out


def model_info(name: str) -> dict[str, Any]:
    """Head, method, short description, training loss and control variant (None when the
    baseline is its only reference) of a preset or HEAD+METHOD, for tables and pickers."""
    from .methods import get_method

    head, method = parse_variant(name)
    m = get_method(method)
    canonical = variant_name(head, method)
    preset = canonical if canonical in PRESETS else None
    if preset:
        description, control = _DESCRIPTIONS[preset], _CONTROLS.get(preset)
    else:
        description = f"{get_head(head).description}; {m.description}"
        control = variant_name("baseline", method)
    return {
        "name": canonical,
        "head": head,
        "method": method,
        "preset": preset,
        "description": description,
        "loss": m.loss_kind,
        "control": control,
    }


def describe_heads() -> dict[str, str]:
    """Head name -> its description (the ``list-parts`` subcommand, the Training page)."""
    return {name: spec.description for name, spec in HEADS.items()}
