"""timm backbones (``--backbone timm:NAME``): any model of PyTorch Image Models that builds with
``features_only`` (docs/design.md §1, "Backbones").

The head sits on the **last feature stage**: the deepest map timm's ``features_only`` model
returns (``feature_info.channels()[-1]``), not ``forward_features``, which for some families
adds a last 1x1 convolution (EfficientNet-B0: 320 channels at the last stage, 1,280 after its
``conv_head``). The layer groups of the per-layer conflict are timm's feature stages, named by
the module whose output each one is (``feature_info.module_name()``: ``act1``, ``layer1`` ...
for ResNets, ``blocks.0`` ... for EfficientNets); a stage owns its own parameters and those of
the modules between it and the stage before (the stem goes to the first).

timm is imported only when a timm backbone is built. ``--pretrained PATH`` loads a local
safetensors state dict (of timm's full classifier or of the features model; the classifier's
tensors are dropped); ``--pretrained imagenet`` asks timm for its default weights (Hugging Face
hub), which without network fails in one line naming the local alternative.
"""

from __future__ import annotations

import contextlib
import io

import torch
from torch import Tensor, nn

from .backbones import TIMM_PREFIX, BackboneError, read_safetensors, register_backbone_family

__all__ = ["TimmBackbone", "search_timm"]


def _timm():
    try:
        import timm
    except ImportError:
        raise BackboneError(
            "timm backbones need timm: pip install timm (it is in requirements.txt)"
        ) from None
    return timm


def search_timm(query: str, limit: int = 50) -> list[str]:
    """``timm:NAME`` of timm's architectures whose name contains ``query`` (case-insensitive;
    pickers search rather than list timm's ~1,400 models), at most ``limit``, sorted; [] where
    timm is not installed or the query is blank. Names that start with it come first."""
    query = query.strip().lower().removeprefix(TIMM_PREFIX)
    if not query:
        return []
    try:
        import timm
    except ImportError:
        return []
    names = sorted((not n.startswith(query), n) for n in timm.list_models() if query in n)
    return [TIMM_PREFIX + n for _, n in names[:limit]]  # names starting with it first


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:160]


def _create(model_name: str, **kwargs) -> nn.Module:
    """timm's features_only model; BackboneError in one line when timm cannot build one."""
    timm = _timm()
    if model_name.startswith(("hf-hub:", "hf_hub:", "local-dir:")) or not timm.is_model(model_name):
        raise BackboneError(
            f"unknown timm model {model_name!r}: name one of timm.list_models() (e.g. "
            "timm:resnet18, timm:efficientnet_b0)"
        )
    chatter = io.StringIO()  # stdout stays clean for --json
    try:
        with contextlib.redirect_stdout(chatter):
            return timm.create_model(model_name, features_only=True, **kwargs)
    except Exception as e:  # timm raises RuntimeError, AssertionError, ...
        if kwargs.get("pretrained"):
            raise
        raise BackboneError(
            f"timm model {model_name!r} cannot be a backbone: it does not build with "
            f"features_only ({_first_line(e)})"
        ) from None


def _stage_map(net: nn.Module, stages: list[str]) -> dict[str, str]:
    """Parameter name (relative to ``net``) -> its stage: the first feature point at or after
    the module that holds it, in module order (forward order for timm's feature models)."""
    order = [name for name, _ in net.named_modules()]
    pos = {name: i for i, name in enumerate(order)}

    def end(stage: str) -> int:  # the last module inside the stage's module
        # FeatureListNet flattens "stages.0" to "stages_0"; FeatureGetterNet nests it under
        # "model.", FeatureHookNet under "body."
        for name in (stage, stage.replace(".", "_"), f"model.{stage}", f"body.{stage}"):
            if name in pos:
                inside = [i for m, i in pos.items() if m == name or m.startswith(name + ".")]
                return max(inside)
        raise BackboneError(
            f"timm feature module {stage!r} is not a module of the features model, so its "
            "parameters cannot be grouped by stage"
        )

    ends = [end(s) for s in stages]
    out = {}
    for pname, _ in net.named_parameters():
        owner = pos[pname.rsplit(".", 1)[0]] if "." in pname else 0
        j = next((k for k, e in enumerate(ends) if e >= owner), len(stages) - 1)
        out[pname] = stages[j]
    return out


class TimmBackbone(nn.Module):
    """A timm model's ``features_only`` network: (B, 3, H, W) -> its last feature map
    (B, out_channels, H / reduction, W / reduction). Parameters are ``net.<timm's names>``."""

    def __init__(self, model_name: str) -> None:
        super().__init__()
        self.net = _create(model_name, pretrained=False)
        info = getattr(self.net, "feature_info", None)
        if info is None or not hasattr(info, "channels"):
            raise BackboneError(
                f"timm model {model_name!r} cannot be a backbone: it does not build with "
                "features_only (its model has no feature_info)"
            )
        self.model_name = model_name
        self.name = TIMM_PREFIX + model_name
        self.out_channels = int(info.channels()[-1])
        self.reduction = int(info.reduction()[-1])
        self._stages = [str(m) for m in info.module_name()]
        self._stage = _stage_map(self.net, self._stages)

    def stage_names(self) -> list[str]:
        """timm's feature stages, in forward order."""
        return list(self._stages)

    def stage_of(self, name: str) -> str:
        """The stage of a parameter named relative to the backbone (``net.layer1.0.bn1.bias``)."""
        return self._stage[name.removeprefix("net.")]

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)[-1]

    def check_input(self, image_size: int) -> None:
        """Refuse in one line an image size the model cannot take (a ViT's fixed patch grid, a
        map reduced below one pixel): one forward of a zero image, no gradients."""
        was = self.training
        self.eval()
        try:
            with torch.no_grad():
                z = self.forward(torch.zeros(1, 3, image_size, image_size))
        except Exception as e:  # shape and size errors of any kind
            raise BackboneError(
                f"{self.name} does not take {image_size}px images ({_first_line(e)})"
            ) from None
        finally:
            self.train(was)
        if z.dim() != 4:
            raise BackboneError(
                f"{self.name}'s last feature stage is not a (B, C, H, W) map (shape "
                f"{tuple(z.shape)}): the heads need one"
            )

    def load_pretrained(self, source: str) -> dict:
        """``imagenet`` (timm's download) or a local safetensors file; what run.json records."""
        if source == "imagenet":
            try:
                fresh = _create(self.model_name, pretrained=True)
            except Exception as e:  # hub, network and file errors alike
                raise BackboneError(
                    f"cannot fetch timm's ImageNet weights for {self.model_name} "
                    f"({_first_line(e)}); without network, save them as safetensors on another "
                    "machine and pass --pretrained PATH.safetensors (docs/design.md#backbones)"
                ) from None
            self.net.load_state_dict(fresh.state_dict())
            return {"source": source, "weights": f"timm:{self.model_name} (pretrained=True)"}
        state, origin = read_safetensors(source)
        own = self.net.state_dict()
        if not all(k in state and state[k].shape == v.shape for k, v in own.items()):
            state = self._via_timm(state, source)  # a full classifier's state dict
        self.net.load_state_dict({k: state[k] for k in own}, strict=True)
        return {"source": source, "weights": origin}

    def _via_timm(self, state: dict, source: str) -> dict:
        """The features model's state dict from a state dict of timm's classifier: timm maps
        the keys (and drops the classifier) as it does for its own weights."""
        overlay = {"source": "", "state_dict": state}  # no hub: this dict only
        try:
            fresh = _create(self.model_name, pretrained=True, pretrained_cfg_overlay=overlay)
        except Exception as e:  # missing or wrong-shaped tensors
            raise BackboneError(
                f"--pretrained {source!r} does not fit timm:{self.model_name} ({_first_line(e)})"
            ) from None
        return fresh.state_dict()


register_backbone_family(TIMM_PREFIX, TimmBackbone)  # timm itself is imported on first use
