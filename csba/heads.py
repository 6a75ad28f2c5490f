"""Heads (docs/design.md §1): the paper's four classifier topologies on top of any backbone,
behind one registry (:data:`HEADS`). A network is a backbone (csba.backbones) plus a head; the
training recipe is a method (csba.methods); csba.models pairs them (presets and ``HEAD+METHOD``).

Every network maps images (B, 3, H, W) to logits (B, C) and exposes the same analysis hooks:

* ``forward_features(x) -> Z``: the shared backbone output, (B, F, h, w); F = 768 on trifire.
* ``head_parts(z) -> HeadOutput``: fused logits, per-branch outputs before fusion and, where the
  head has them, the attention gates a_k.
* ``layer_groups()``: parameter names per layer group (the backbone's stages, attention, heads).
* ``branch_parameter_names()``: parameter names per branch (its attention included).
* ``classifier_parameter_names()`` / ``reset_classifier()``: what cRT's stage 2 re-trains.

A method that needs a cosine classifier (LDAM-DRW) gets one from every head: ``classifier=
"cosine"`` builds each branch (each class head's last layer) as csba.layers.NormedLinear at
logit scale ``scale``. C independent class heads (class_heads) are refused above
:data:`MAX_CLASS_HEADS` classes. State-dict keys are those of the shipped runs
(``branches.0.weight``, ``gates.0.fc1.weight``, ``heads.0.gate.fc1.weight``, ``branch_weights``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .backbones import build_backbone
from .layers import FEATURE_CHANNELS, NEG_SLOPE, NormedLinear, SEGate, conv_bn_act, init_weights

__all__ = [
    "CLASSIFIERS",
    "HEADS",
    "MAX_CLASS_HEADS",
    "BaselineNet",
    "CSBANet",
    "ClassHead",
    "ClassHeadsNet",
    "GradNormNet",
    "HeadNet",
    "HeadOutput",
    "HeadSpec",
    "get_head",
    "list_heads",
]

CLASSIFIERS = ("linear", "cosine")


@dataclass
class HeadOutput:
    """Everything a head computes, for analysis.

    logits: (B, C) fused logits. branch_logits: one tensor per branch before fusion, (B, C) for the
    summed-branch heads and (B, 1) per class head for class_heads. attention: (B, K, F) gates
    (F: the backbone's channels, 768 on trifire) or None for heads without attention.
    """

    logits: Tensor
    branch_logits: list[Tensor]
    attention: Tensor | None = None


class HeadNet(nn.Module):
    """Common plumbing: a backbone (csba.backbones) + a head that implements ``head_parts``.

    ``variant`` and ``method`` name the preset or ``HEAD+METHOD`` and the training method
    (set by csba.models.create_model)."""

    head: str = ""  # the key of HEADS
    gated: bool = False  # squeeze-excitation gates in front of its branches or heads
    variant: str = ""
    method: str = "weighted"

    def __init__(self, num_classes: int, in_channels: int = 3, backbone: str = "trifire") -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.num_classes = num_classes
        self.backbone_name = backbone
        self.backbone = build_backbone(backbone, in_channels)
        self.feature_channels = int(self.backbone.out_channels)  # F: channels of Z
        self.variant = self.variant or self.head

    def _init_own(self) -> None:
        """Our init on every part but a torchvision backbone (its builder's init stays). Same
        module order as one pass over the whole model, so trifire models draw the same
        numbers as before backbones were pluggable."""
        for name, child in self.named_children():
            if name != "backbone" or self.backbone_name == "trifire":
                init_weights(child)

    def forward_features(self, x: Tensor) -> Tensor:
        """Backbone output Z, (B, F, h, w)."""
        return self.backbone(x)

    def head_parts(self, z: Tensor) -> HeadOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_parts(self, x: Tensor) -> HeadOutput:
        """Logits plus per-branch outputs and attention for images x."""
        return self.head_parts(self.forward_features(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head_parts(self.forward_features(x)).logits

    @property
    def num_branches(self) -> int:
        return len(self.branch_parameter_names())

    def branch_parameter_names(self) -> list[list[str]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def classifier_parameter_names(self) -> list[str]:
        """The classifier cRT's stage 2 re-trains: everything outside the backbone (branches,
        the gates of gated heads, learnable branch weights)."""
        return [n for n, _ in self.named_parameters() if not n.startswith("backbone.")]

    @torch.no_grad()
    def reset_classifier(self) -> None:
        """Re-initialise the classifier as at construction (cRT stage 2)."""
        for name, child in self.named_children():
            if name == "backbone":
                continue
            for m in child.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear, NormedLinear)):
                    nn.init.kaiming_uniform_(m.weight, a=NEG_SLOPE, nonlinearity="leaky_relu")
                    if getattr(m, "bias", None) is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, nn.BatchNorm2d):
                    m.reset_parameters()

    def layer_groups(self) -> dict[str, list[str]]:
        """Parameter names per layer group: the backbone's stages (trifire: stem, fire1..fire8),
        then attention and heads (docs/design.md §4)."""
        groups: dict[str, list[str]] = {name: [] for name in self.backbone.stage_names()}
        groups["attention"] = []
        groups["heads"] = []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            parts = name.split(".")
            if parts[0] == "backbone":
                groups[self.backbone.stage_of(name.split(".", 1)[1])].append(name)
            elif any(part in ("gate", "gates") for part in parts):
                groups["attention"].append(name)
            else:
                groups["heads"].append(name)
        return {k: v for k, v in groups.items() if v}


def _check_classifier(classifier: str) -> None:
    if classifier not in CLASSIFIERS:
        raise ValueError(f"classifier must be one of {', '.join(CLASSIFIERS)}, got {classifier!r}")


class BaselineNet(HeadNet):
    """K branches Dropout -> Conv1x1(F -> C), summed, global average pooled. Cosine: branch k
    is Dropout -> GAP -> s * cos(., w_k) / K, so the fused logits are s times the mean cosine."""

    head = "baseline"

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        branches: int = 3,  # K (pinned)
        dropout: float = 0.5,  # per-branch dropout before the 1x1 conv (pinned)
        backbone: str = "trifire",  # csba.backbones.list_backbones()
        classifier: str = "linear",  # "cosine": the method asks for LDAM's cosine classifier
        scale: float | None = None,  # s of a cosine classifier (LDAM: 30)
    ) -> None:
        _check_classifier(classifier)
        super().__init__(num_classes, in_channels, backbone)
        self.drop = nn.ModuleList(nn.Dropout(dropout) for _ in range(branches))
        self.branches = nn.ModuleList(
            nn.Conv2d(self.feature_channels, num_classes, 1) for _ in range(branches)
        )
        self._init_own()
        self.cosine = classifier == "cosine"
        if self.cosine:  # built after the linear ones, in the order the shipped runs drew
            self.scale = float(scale or 30.0)
            self.branches = nn.ModuleList(
                NormedLinear(self.feature_channels, num_classes) for _ in range(branches)
            )

    def _branch_inputs(self, z: Tensor) -> tuple[list[Tensor], Tensor | None]:
        return [z] * len(self.branches), None

    def _fuse(self, branch_logits: list[Tensor]) -> Tensor:
        return torch.stack(branch_logits, 0).sum(0)

    def _branch(self, drop: nn.Module, branch: nn.Module, zk: Tensor) -> Tensor:
        if self.cosine:
            return self.scale * branch(drop(zk).mean(dim=(2, 3))) / len(self.branches)
        # GAP commutes with the sum, so pooling each branch first gives the same fused logits.
        return branch(drop(zk)).mean(dim=(2, 3))

    def head_parts(self, z: Tensor) -> HeadOutput:
        inputs, attention = self._branch_inputs(z)
        branch_logits = [
            self._branch(drop, branch, zk)
            for drop, branch, zk in zip(self.drop, self.branches, inputs, strict=True)
        ]
        return HeadOutput(self._fuse(branch_logits), branch_logits, attention)

    def branch_parameter_names(self) -> list[list[str]]:
        names = [n for n, _ in self.named_parameters()]
        return [
            [n for n in names if n.startswith((f"branches.{k}.", f"gates.{k}."))]
            for k in range(len(self.branches))
        ]


class CSBANet(BaselineNet):
    """Baseline whose branch k sees a_k * Z, a_k an independent bias-free SE gate."""

    head = "csba"
    gated = True

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        branches: int = 3,
        dropout: float = 0.5,
        se_hidden: int | None = None,  # SE bottleneck width; None: F / 8 (96 on trifire, pinned)
        backbone: str = "trifire",
        classifier: str = "linear",
        scale: float | None = None,
    ) -> None:
        super().__init__(
            num_classes,
            in_channels,
            branches,
            dropout,
            backbone,
            classifier=classifier,
            scale=scale,
        )
        self.gates = nn.ModuleList(
            SEGate(self.feature_channels, se_hidden) for _ in range(branches)
        )
        init_weights(self.gates)

    def _branch_inputs(self, z: Tensor) -> tuple[list[Tensor], Tensor | None]:
        a = torch.stack([gate(z) for gate in self.gates], dim=1)  # (B, K, F)
        return [z * a[:, k, :, None, None] for k in range(a.shape[1])], a


class GradNormNet(BaselineNet):
    """Baseline with branch outputs scaled by softmax(w), w in R^K learnable, init 0. Cosine:
    the fused logits are s times the softmax-weighted mean cosine."""

    head = "gradnorm"

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        branches: int = 3,
        dropout: float = 0.5,
        backbone: str = "trifire",
        classifier: str = "linear",
        scale: float | None = None,
    ) -> None:
        super().__init__(
            num_classes,
            in_channels,
            branches,
            dropout,
            backbone,
            classifier=classifier,
            scale=scale,
        )
        self.branch_weights = nn.Parameter(torch.zeros(branches))

    def _fuse(self, branch_logits: list[Tensor]) -> Tensor:
        w = torch.softmax(self.branch_weights, 0)
        if self.cosine:  # cosine branches carry s * cos / K: undo the 1 / K of the mean
            w = w * len(branch_logits)
        return (torch.stack(branch_logits, 0) * w[:, None, None]).sum(0)

    @torch.no_grad()
    def reset_classifier(self) -> None:
        super().reset_classifier()
        self.branch_weights.zero_()


# One head per class: parameters grow with C (1.0 M per class on trifire, 3.4 M on resnet50)
# and the per-class diagnostics with C^2; above this the head is refused in one line.
MAX_CLASS_HEADS = 32


class ClassHead(nn.Module):
    """One class's head: SE gate -> Conv3x3(F->128) -> BN -> LReLU -> Dropout -> Conv1x1 -> GAP.

    Returns the class logit (B, 1) and the gate (B, F). Cosine: ... -> Dropout -> GAP ->
    s * cos(., w), the class's cosine logit.
    """

    def __init__(
        self,
        hidden: int = 128,
        se_hidden: int | None = None,
        dropout: float = 0.5,
        channels: int = FEATURE_CHANNELS,
        scale: float | None = None,  # None: linear; a float: a cosine classifier at this scale
    ) -> None:
        super().__init__()
        self.gate = SEGate(channels, se_hidden)
        layers = [conv_bn_act(channels, hidden, 3), nn.Dropout(dropout)]
        self.scale = scale
        if scale is None:
            layers.append(nn.Conv2d(hidden, 1, 1))
        self.body = nn.Sequential(*layers)
        if scale is not None:
            self.classifier = NormedLinear(hidden, 1)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        a = self.gate(z)  # (B, F)
        h = self.body(z * a[:, :, None, None]).mean(dim=(2, 3))  # (B, 1) or (B, hidden)
        if self.scale is not None:
            h = self.scale * self.classifier(h)
        return h, a  # (B, 1), (B, F)


class ClassHeadsNet(HeadNet):
    """C independent heads; head c produces class c's logit (hard class-to-branch routing)."""

    head = "class_heads"
    gated = True

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        hidden: int = 128,  # Conv3x3 width per head (pinned)
        se_hidden: int | None = None,
        dropout: float = 0.5,
        backbone: str = "trifire",
        classifier: str = "linear",
        scale: float | None = None,
    ) -> None:
        _check_classifier(classifier)
        super().__init__(num_classes, in_channels, backbone)
        self.cosine = classifier == "cosine"
        if self.cosine:
            self.scale = float(scale or 30.0)
        self.heads = nn.ModuleList(
            ClassHead(
                hidden,
                se_hidden,
                dropout,
                self.feature_channels,
                self.scale if self.cosine else None,
            )
            for _ in range(num_classes)
        )
        self._init_own()

    def head_parts(self, z: Tensor) -> HeadOutput:
        outs = [head(z) for head in self.heads]
        branch_logits = [o[0] for o in outs]
        return HeadOutput(
            torch.cat(branch_logits, dim=1), branch_logits, torch.stack([o[1] for o in outs], 1)
        )

    def branch_parameter_names(self) -> list[list[str]]:
        names = [n for n, _ in self.named_parameters()]
        return [[n for n in names if n.startswith(f"heads.{c}.")] for c in range(len(self.heads))]


@dataclass(frozen=True)
class HeadSpec:
    """A registered head: its network class, one line for tables and pickers, and up to how
    many classes it is sensible (None: any)."""

    cls: type[HeadNet]
    description: str
    max_classes: int | None = None
    why_limit: str = ""


HEADS: dict[str, HeadSpec] = {
    "baseline": HeadSpec(BaselineNet, "3 summed branches, Dropout -> Conv1x1"),
    "csba": HeadSpec(CSBANet, "an independent SE attention gate before each of 3 branches"),
    "gradnorm": HeadSpec(GradNormNet, "3 branches fused by learnable softmax weights"),
    "class_heads": HeadSpec(
        ClassHeadsNet,
        "one SE-gated Conv3x3 head per class, logits concatenated",
        MAX_CLASS_HEADS,
        "it builds one SE-gated Conv3x3 head per class (1.0 M parameters each on trifire) and "
        "every per-class diagnostic runs every class through every head",
    ),
}


def list_heads() -> list[str]:
    """The registered heads' names (``--head``)."""
    return list(HEADS)


def get_head(name: str) -> HeadSpec:
    """The head called ``name``; ValueError naming the registered ones otherwise."""
    try:
        return HEADS[name]
    except KeyError:
        raise ValueError(f"unknown head {name!r}; choose one of: {', '.join(HEADS)}") from None
