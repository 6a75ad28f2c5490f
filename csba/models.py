"""The variants (docs/design.md §1) behind one registry: the paper's five and the long-tail
methods (logit adjustment, LDAM-DRW, cRT, PCGrad and its control).

Every model maps images (B, 3, H, W) to logits (B, C) and exposes the same analysis hooks:

* ``forward_features(x) -> Z``: the shared backbone output, (B, F, h, w); F = 768 on the
  paper's trifire backbone, the last feature map's channels on a torchvision one.
* ``head_parts(z) -> HeadOutput``: fused logits, per-branch outputs before fusion and, where the
  variant has them, the attention gates a_k.
* ``layer_groups()``: parameter names per layer group (the backbone's stages, attention, heads).
* ``branch_parameter_names()``: parameter names per branch (its attention included).

Use :func:`create_model` and :func:`list_models`; never instantiate the classes by hand in callers
that take a variant name from a user.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import build_backbone, register_backbone

__all__ = [
    "PAPER_VARIANTS",
    "Backbone",
    "BaselineNet",
    "CRTNet",
    "CSBANet",
    "ClassHeadsNet",
    "ClassSumNet",
    "GradNormNet",
    "HeadOutput",
    "LDAMNet",
    "LogitAdjustNet",
    "NormedLinear",
    "PCGradNet",
    "SEGate",
    "TriFire",
    "count_parameters",
    "create_model",
    "gated_variants",
    "list_models",
    "model_info",
    "parameter_counts",
]

NEG_SLOPE = 0.1  # LeakyReLU slope everywhere (pinned)
FEATURE_CHANNELS = 768  # channels of Z

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


def _conv_bn_act(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=True),
        nn.BatchNorm2d(cout),
        nn.LeakyReLU(NEG_SLOPE, inplace=True),
    )


class TriFire(nn.Module):
    """Fire module with three expand paths (1x1, 3x3, 3x3) on one squeezed tensor.

    (B, cin, h, w) -> (B, 3 * expand, h, w).
    """

    def __init__(self, cin: int, squeeze: int, expand: int) -> None:
        super().__init__()
        self.squeeze = _conv_bn_act(cin, squeeze, 1)
        self.expand1 = _conv_bn_act(squeeze, expand, 1)
        self.expand3a = _conv_bn_act(squeeze, expand, 3)
        self.expand3b = _conv_bn_act(squeeze, expand, 3)

    def forward(self, x: Tensor) -> Tensor:
        s = self.squeeze(x)
        return torch.cat([self.expand1(s), self.expand3a(s), self.expand3b(s)], dim=1)


class Backbone(nn.Module):
    """Shared tri-path SqueezeNet-style extractor: (B, 3, H, W) -> Z (B, 768, ~H/16, ~W/16)."""

    def __init__(self, in_channels: int = 3, stem_channels: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            _conv_bn_act(in_channels, stem_channels, 3, stride=2),
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


class SEGate(nn.Module):
    """Bias-free squeeze-and-excitation gate: Z (B, C, h, w) -> a (B, C) in (0, 1)."""

    def __init__(self, channels: int = FEATURE_CHANNELS, hidden: int | None = None) -> None:
        hidden = hidden or max(1, channels // 8)  # 768 / 8 = 96 on trifire (pinned)
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden, bias=False)  # W1: hidden x channels
        self.fc2 = nn.Linear(hidden, channels, bias=False)  # W2: channels x hidden

    def forward(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.fc2(F.relu(self.fc1(z.mean(dim=(2, 3))))))


@dataclass
class HeadOutput:
    """Everything a head computes, for analysis.

    logits: (B, C) fused logits. branch_logits: one tensor per branch before fusion, (B, C) for the
    summed-branch variants and (B, 1) per class head for class_heads. attention: (B, K, F) gates
    (F: the backbone's channels, 768 on trifire) or None for variants without attention.
    """

    logits: Tensor
    branch_logits: list[Tensor]
    attention: Tensor | None = None


class _Net(nn.Module):
    """Common plumbing: a backbone (csba.backbones) + a head that implements ``head_parts``."""

    variant: str = ""
    loss: str = "ce"  # training loss this variant is defined with (csba.losses.make_loss kind)
    # How it trains (docs/design.md §2): "weighted" = its loss with the pinned class weights;
    # "logit_adjust" = its loss unweighted; "ldam_drw", "crt", "pcgrad", "class_sum": the
    # procedures of csba.train / csba.methods.
    method: str = "weighted"
    # The variant that isolates what this one adds (report compares the two): PCGrad's control
    # is the same per-class loss sum without projection. None: the baseline is the only reference.
    control: str | None = None
    # Squeeze-excitation gates in front of its branches or heads (attention to inspect).
    gated: bool = False

    def __init__(self, num_classes: int, in_channels: int = 3, backbone: str = "trifire") -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.num_classes = num_classes
        self.backbone_name = backbone
        self.backbone = build_backbone(backbone, in_channels)
        self.feature_channels = int(self.backbone.out_channels)  # F: channels of Z

    def _init_own(self) -> None:
        """Our init on every part but a torchvision backbone (its builder's init stays). Same
        module order as one pass over the whole model, so trifire models draw the same
        numbers as before backbones were pluggable."""
        for name, child in self.named_children():
            if name != "backbone" or self.backbone_name == "trifire":
                _init_weights(child)

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


def _init_weights(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_uniform_(m.weight, a=NEG_SLOPE, nonlinearity="leaky_relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class BaselineNet(_Net):
    """K branches Dropout -> Conv1x1(F -> C), summed, global average pooled."""

    variant = "baseline"

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        branches: int = 3,  # K (pinned)
        dropout: float = 0.5,  # per-branch dropout before the 1x1 conv (pinned)
        backbone: str = "trifire",  # csba.backbones.list_backbones()
    ) -> None:
        super().__init__(num_classes, in_channels, backbone)
        self.drop = nn.ModuleList(nn.Dropout(dropout) for _ in range(branches))
        self.branches = nn.ModuleList(
            nn.Conv2d(self.feature_channels, num_classes, 1) for _ in range(branches)
        )
        self._init_own()

    def _branch_inputs(self, z: Tensor) -> tuple[list[Tensor], Tensor | None]:
        return [z] * len(self.branches), None

    def _fuse(self, branch_logits: list[Tensor]) -> Tensor:
        return torch.stack(branch_logits, 0).sum(0)

    def head_parts(self, z: Tensor) -> HeadOutput:
        inputs, attention = self._branch_inputs(z)
        # GAP commutes with the sum, so pooling each branch first gives the same fused logits.
        branch_logits = [
            conv(drop(zk)).mean(dim=(2, 3))
            for drop, conv, zk in zip(self.drop, self.branches, inputs, strict=True)
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

    variant = "csba"
    gated = True

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        branches: int = 3,
        dropout: float = 0.5,
        se_hidden: int | None = None,  # SE bottleneck width; None: F / 8 (96 on trifire, pinned)
        backbone: str = "trifire",
    ) -> None:
        super().__init__(num_classes, in_channels, branches, dropout, backbone)
        self.gates = nn.ModuleList(
            SEGate(self.feature_channels, se_hidden) for _ in range(branches)
        )
        _init_weights(self.gates)

    def _branch_inputs(self, z: Tensor) -> tuple[list[Tensor], Tensor | None]:
        a = torch.stack([gate(z) for gate in self.gates], dim=1)  # (B, K, F)
        return [z * a[:, k, :, None, None] for k in range(a.shape[1])], a


class GradNormNet(BaselineNet):
    """Baseline with branch outputs scaled by softmax(w), w in R^K learnable, init 0."""

    variant = "gradnorm"

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        branches: int = 3,
        dropout: float = 0.5,
        backbone: str = "trifire",
    ) -> None:
        super().__init__(num_classes, in_channels, branches, dropout, backbone)
        self.branch_weights = nn.Parameter(torch.zeros(branches))

    def _fuse(self, branch_logits: list[Tensor]) -> Tensor:
        w = torch.softmax(self.branch_weights, 0)
        return (torch.stack(branch_logits, 0) * w[:, None, None]).sum(0)


class FocalNet(BaselineNet):
    """Baseline topology, trained with focal loss (see csba.losses)."""

    variant = "focal"
    loss = "focal"


class LogitAdjustNet(BaselineNet):
    """Baseline topology trained with the logit-adjusted loss (Menon et al., ICLR 2021).

    Unweighted cross-entropy on ``logits + tau * log(prior)``; at tau = 1 this is the balanced
    softmax loss (Ren et al., NeurIPS 2020). Prediction uses the raw logits.
    """

    variant = "logit_adjust"
    loss = "logit_adjust"
    method = "logit_adjust"


class NormedLinear(nn.Module):
    """Cosine classifier of LDAM (Cao et al., NeurIPS 2019): cos(x, w_c), (B, F) -> (B, C)."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.kaiming_uniform_(self.weight, a=NEG_SLOPE, nonlinearity="leaky_relu")

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x.float(), dim=1) @ F.normalize(self.weight.float(), dim=1).t()


class LDAMNet(BaselineNet):
    """LDAM-DRW (Cao et al., NeurIPS 2019): K branches Dropout -> GAP -> cosine classifier.

    Branch k gives ``scale * cos_k / K``, so the fused logits are ``scale`` times the branches'
    mean cosine (in [-scale, scale]); the class margins live in the loss (csba.losses.ldam_loss)
    and the deferred re-weighting in training (docs/design.md §2).
    """

    variant = "ldam_drw"
    loss = "ldam"
    method = "ldam_drw"

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        branches: int = 3,
        dropout: float = 0.5,
        scale: float = 30.0,  # s of LDAM (their code's default)
        backbone: str = "trifire",
    ) -> None:
        super().__init__(num_classes, in_channels, branches, dropout, backbone)
        self.scale = scale
        self.branches = nn.ModuleList(
            NormedLinear(self.feature_channels, num_classes) for _ in range(branches)
        )

    def head_parts(self, z: Tensor) -> HeadOutput:
        k = len(self.branches)
        branch_logits = [
            self.scale * head(drop(z).mean(dim=(2, 3))) / k
            for drop, head in zip(self.drop, self.branches, strict=True)
        ]
        return HeadOutput(self._fuse(branch_logits), branch_logits, None)


class CRTNet(BaselineNet):
    """Classifier re-training (Kang et al., ICLR 2020) on the baseline topology.

    Stage 1: the whole model, unweighted instance-balanced cross-entropy. Stage 2: the branches'
    1x1 heads re-initialised and re-trained on the frozen backbone (BatchNorm in eval mode) with
    a class-balanced sampler (csba.train).
    """

    variant = "crt"
    method = "crt"


class PCGradNet(BaselineNet):
    """Baseline topology trained by PCGrad (Yu et al., NeurIPS 2020) over per-class losses.

    Each step takes the mean cross-entropy of every class present in the batch as one task,
    projects each task's gradient off the others it conflicts with, and steps on their sum.
    """

    variant = "pcgrad"
    loss = "class_mean"
    method = "pcgrad"
    control = "pcgrad_control"


class ClassSumNet(BaselineNet):
    """PCGrad's control: the same sum of per-class mean losses, without projection."""

    variant = "pcgrad_control"
    loss = "class_mean"
    method = "class_sum"


class ClassHead(nn.Module):
    """One class's head: SE gate -> Conv3x3(F->128) -> BN -> LReLU -> Dropout -> Conv1x1 -> GAP.

    Returns the class logit (B, 1) and the gate (B, F).
    """

    def __init__(
        self,
        hidden: int = 128,
        se_hidden: int | None = None,
        dropout: float = 0.5,
        channels: int = FEATURE_CHANNELS,
    ) -> None:
        super().__init__()
        self.gate = SEGate(channels, se_hidden)
        self.body = nn.Sequential(
            _conv_bn_act(channels, hidden, 3),
            nn.Dropout(dropout),
            nn.Conv2d(hidden, 1, 1),
        )

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        a = self.gate(z)  # (B, F)
        return self.body(z * a[:, :, None, None]).mean(dim=(2, 3)), a  # (B, 1), (B, F)


class ClassHeadsNet(_Net):
    """C independent heads; head c produces class c's logit (hard class-to-branch routing)."""

    variant = "class_heads"
    gated = True

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        hidden: int = 128,  # Conv3x3 width per head (pinned)
        se_hidden: int | None = None,
        dropout: float = 0.5,
        backbone: str = "trifire",
    ) -> None:
        super().__init__(num_classes, in_channels, backbone)
        self.heads = nn.ModuleList(
            ClassHead(hidden, se_hidden, dropout, self.feature_channels) for _ in range(num_classes)
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


# ---- registry --------------------------------------------------------------------------------

_REGISTRY: dict[str, Callable[..., _Net]] = {
    "baseline": BaselineNet,
    "csba": CSBANet,
    "focal": FocalNet,
    "gradnorm": GradNormNet,
    "class_heads": ClassHeadsNet,
    "logit_adjust": LogitAdjustNet,
    "ldam_drw": LDAMNet,
    "crt": CRTNet,
    "pcgrad": PCGradNet,
    "pcgrad_control": ClassSumNet,
}

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


PAPER_VARIANTS = ("baseline", "csba", "focal", "gradnorm", "class_heads")  # the paper's five


def list_models() -> list[str]:
    """Names of the registered variants: the paper's five, then the long-tail methods."""
    return list(_REGISTRY)


def gated_variants() -> list[str]:
    """The registered variants with attention gates (the Attention page's subjects)."""
    return [name for name, cls in _REGISTRY.items() if getattr(cls, "gated", False)]


def create_model(name: str, num_classes: int, **kwargs) -> _Net:
    """Build variant ``name`` for ``num_classes`` classes; kwargs override pinned defaults."""
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown variant {name!r}; choose one of: {', '.join(list_models())}"
        ) from None
    return cls(num_classes, **kwargs)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def parameter_counts(num_classes: int, backbones: list[str] | None = None) -> dict:
    """Trainable parameters of every variant on every backbone at ``num_classes``:
    ``{backbone: {variant: count}}`` (default: every listed backbone). Built on PyTorch's meta
    device, so no memory is used and nothing is initialised."""
    from .backbones import list_backbones

    out: dict[str, dict[str, int]] = {}
    with torch.device("meta"):
        for b in backbones or list_backbones():
            out[b] = {
                v: count_parameters(create_model(v, num_classes, backbone=b)) for v in _REGISTRY
            }
    return out


def model_info(name: str) -> dict[str, str]:
    """Short description, training loss, training procedure and control variant (None when
    the baseline is its only reference) of a variant, for tables and pickers."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown variant {name!r}; choose one of: {', '.join(list_models())}")
    cls = _REGISTRY[name]
    return {
        "name": name,
        "description": _DESCRIPTIONS[name],
        "loss": cls.loss,
        "method": cls.method,
        "control": cls.control,
    }
