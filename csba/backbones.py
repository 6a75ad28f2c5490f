"""Backbones (docs/design.md §1): the paper's tri-path Fire extractor (``trifire``, the default),
torchvision families built by torchvision's own builders and any timm model with
``features_only`` (``timm:NAME``, csba.timm_backbone). Every backbone maps images
(B, 3, H, W) to one feature map Z (B, out_channels, h, w) that the heads of csba.models sit on,
and names its stages, the layer groups of the per-layer conflict.

``--pretrained imagenet`` asks torchvision for its ImageNet weights (its own download and
cache); ``--pretrained PATH`` loads a torchvision state dict from a local safetensors file
(never a pickle). Pretrained runs normalise with ImageNet statistics (csba.data).
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = [
    "BACKBONES",
    "DEFAULT_BACKBONE",
    "TIMM_PREFIX",
    "BackboneError",
    "TorchvisionBackbone",
    "build_backbone",
    "list_backbones",
    "load_pretrained",
    "read_safetensors",
    "register_backbone",
    "register_backbone_family",
]

DEFAULT_BACKBONE = "trifire"
# torchvision builders we name and test; any other torchvision classifier with a ``features``
# module or ResNet layout works through build_backbone(name) as well.
TORCHVISION = ("resnet18", "resnet50", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny")
BACKBONES = (DEFAULT_BACKBONE, *TORCHVISION)
TIMM_PREFIX = "timm:"  # --backbone timm:NAME: any timm model with features_only (timm_backbone)


_BUILDERS: dict = {}  # name -> builder(in_channels) of our own backbones (csba.models: trifire)
_FAMILIES: dict = {}  # prefix -> builder(rest of the name) (csba.timm_backbone: "timm:")


def register_backbone(name: str, builder) -> None:
    """Make ``build_backbone(name)`` call ``builder(in_channels)``."""
    _BUILDERS[name] = builder


def register_backbone_family(prefix: str, builder) -> None:
    """Make ``build_backbone(prefix + NAME)`` call ``builder(NAME)`` (3-channel images)."""
    _FAMILIES[prefix] = builder


class BackboneError(ValueError):
    """A backbone cannot be built or its weights cannot be loaded; one line, says what to do."""


def list_backbones() -> list[str]:
    """The backbones we name: trifire and the torchvision families (``--backbone`` also takes
    any torchvision classifier and ``timm:NAME``, csba.timm_backbone)."""
    return list(BACKBONES)


class TorchvisionBackbone(nn.Module):
    """A torchvision classifier without its pooling and classifier: (B, 3, H, W) -> Z.

    Submodules keep torchvision's names (``conv1``, ``layer1`` ... for ResNets; ``features``
    otherwise), so a torchvision state dict loads into it as it is. Stages: ResNets ``stem``
    (conv1, bn1) and ``layer1``..``layer4``; ``features`` models ``stem`` (features.0) and
    ``stage1``.. (consecutive blocks at one resolution, found by a probe forward at 64 px).
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        from torchvision.models import get_model_builder, list_models

        if name not in list_models(module=__import__("torchvision").models):
            raise BackboneError(
                f"unknown backbone {name!r}; choose one of: {', '.join(list_backbones())}"
            )
        net = get_model_builder(name)(weights=None)
        self.name = name
        if hasattr(net, "layer4"):  # ResNet family
            self.kind = "resnet"
            for part in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3"):
                setattr(self, part, getattr(net, part))
            self.layer4 = net.layer4
            self._stage = {"conv1": "stem", "bn1": "stem"}
        elif hasattr(net, "features"):
            self.kind = "features"
            self.features = net.features
            self._stage = self._features_stages()
        else:
            raise BackboneError(f"torchvision model {name!r} has no feature extractor we know")
        with torch.no_grad():
            self.out_channels = int(self._probe(32)[-1].shape[1])

    def _probe(self, size: int) -> list[Tensor]:
        """Outputs of each top-level block on a zero image (eval mode, no statistics kept)."""
        was = self.training
        self.eval()
        x = torch.zeros(1, 3, size, size, device=next(self.parameters()).device)
        outs = []
        try:
            if self.kind == "resnet":
                outs.append(self.forward(x))
            else:
                for block in self.features:
                    x = block(x)
                    outs.append(x)
        finally:
            self.train(was)
        return outs

    def _features_stages(self) -> dict[str, str]:
        with torch.no_grad():
            outs = self._probe(64)
        stage, names, last = 0, {"0": "stem"}, None
        for i, out in enumerate(outs[1:], start=1):
            if out.shape[-1] != last:
                stage += 1
                last = out.shape[-1]
            names[str(i)] = f"stage{stage}"
        return names

    def stage_names(self) -> list[str]:
        """The stages in forward order."""
        if self.kind == "resnet":
            return ["stem", "layer1", "layer2", "layer3", "layer4"]
        return list(dict.fromkeys(self._stage.values()))

    def stage_of(self, name: str) -> str:
        """The stage of a parameter named relative to the backbone (``layer1.0.conv1.weight``)."""
        parts = name.split(".")
        if self.kind == "resnet":
            return self._stage.get(parts[0], parts[0])
        return self._stage[parts[1]]

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "resnet":
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            return self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.features(x)


def build_backbone(name: str = DEFAULT_BACKBONE, in_channels: int = 3) -> nn.Module:
    """A backbone by name, randomly initialised (trifire: csba.models' init; torchvision and
    ``timm:NAME``: their builders'). Weights come later, from a run or :func:`load_pretrained`."""
    if name in _BUILDERS:  # trifire: registered by csba.models (no import cycle)
        return _BUILDERS[name](in_channels)
    if in_channels != 3:
        raise BackboneError(f"backbone {name!r} takes 3-channel images, got {in_channels}")
    for prefix, builder in _FAMILIES.items():  # timm:NAME (registered by csba.timm_backbone)
        if name.startswith(prefix):
            return builder(name.removeprefix(prefix))
    return TorchvisionBackbone(name)


def read_safetensors(source: str) -> tuple[dict[str, Tensor], str]:
    """``(state dict, resolved path)`` of a local safetensors file (never a pickle); raises
    BackboneError in one line."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(os.path.expanduser(source))
    if not path.is_file():
        raise BackboneError(f"--pretrained '{path}': no such file (imagenet or a .safetensors)")
    try:
        return load_file(str(path)), str(path.resolve())
    except (SafetensorError, OSError, ValueError) as e:
        raise BackboneError(
            f"--pretrained '{path}' is not a readable safetensors file ({e}); convert a "
            ".pth as docs/design.md#backbones shows"
        ) from None


def load_pretrained(backbone: nn.Module, source: str) -> dict:
    """Load pretrained weights into a torchvision or timm ``backbone``; returns what to record.

    ``source``: ``imagenet`` (the library's download of its default ImageNet weights) or the
    path of a safetensors file holding a state dict of this architecture (the classifier's
    tensors, e.g. ``fc.*``, are ignored). Raises BackboneError in one line.
    """
    if hasattr(backbone, "load_pretrained"):  # timm: csba.timm_backbone
        return backbone.load_pretrained(source)
    if not isinstance(backbone, TorchvisionBackbone):
        raise BackboneError(
            "--pretrained needs a torchvision or timm backbone (trifire has no weights)"
        )
    name = backbone.name
    if source == "imagenet":
        from torchvision.models import get_model_builder, get_model_weights

        weights = get_model_weights(name).DEFAULT
        # torch.hub writes "Downloading: ..." to stdout, which must stay clean for --json
        chatter = io.StringIO()
        try:
            with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
                state = get_model_builder(name)(weights=weights, progress=False).state_dict()
        except OSError as e:  # urllib's URLError is an OSError
            raise BackboneError(
                f"cannot download torchvision's ImageNet weights for {name} ({e}); without "
                "internet, convert them on another machine and pass --pretrained PATH.safetensors "
                "(docs/design.md#backbones)"
            ) from None
        origin = str(weights)
    else:
        state, origin = read_safetensors(source)
    own = backbone.state_dict()
    missing = sorted(set(own) - set(state))
    bad = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or bad:
        raise BackboneError(
            f"--pretrained {source!r} does not fit {name} ({len(missing)} missing, {len(bad)} "
            f"wrong-shaped tensors, e.g. {(missing or bad)[0]})"
        )
    backbone.load_state_dict({k: state[k] for k in own}, strict=True)
    return {"source": source, "weights": origin}
