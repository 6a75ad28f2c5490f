"""A run's identity: which runs are seeds of one experiment, and what a run is called.

One definition, read by every dashboard page, ``compare`` and ``report``:

* :class:`RunIdentity` - dataset, backbone (with its pretraining), variant, image size and
  training protocol (the settings that differ from the pinned defaults). Runs with equal
  identities differ only by their seed, so only they are averaged as seeds.
* :func:`run_label` - ``"baseline s0 (resnet18, 128px)"``: the seed always, the backbone when it
  is not the default one, the image size; :func:`group_label` names a seed group the same way.
* :func:`run_status` / :func:`is_finished` - whether a run ran to its end (``completed``);
  cancelled, interrupted or failed runs are stored too and must never pass for finished ones.

Pure: reads run.json dictionaries, imports no torch at module level.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_BACKBONE",
    "PROTOCOL_KEYS",
    "RunIdentity",
    "backbone_name",
    "dataset_name",
    "group_label",
    "group_names",
    "head_and_method",
    "identity",
    "image_size",
    "is_finished",
    "method_label",
    "protocol_changes",
    "protocol_text",
    "run_label",
    "run_status",
]

DEFAULT_BACKBONE = "trifire"  # the paper's network; labels name any other backbone
FINISHED = "completed"  # the one status of a run that ran to its end (csba.train)

# TrainConfig fields that make up the training protocol (docs/design.md §2); the rest name the run
# (variant, seed, paths) or only change speed (device, precision, threads).
PROTOCOL_KEYS = (
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "lr_schedule",
    "lr_step",
    "lr_gamma",
    "keep",
    "patience",
    "ema_decay",
    "focal_gamma",
    "augment",
    "label_noise",
    "label_noise_seed",
)


def protocol_changes(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The protocol settings of a run that differ from the pinned defaults of TrainConfig.

    A run.json written before a setting existed lacks it and ran with its default.
    """
    pinned = _pinned()
    config = meta.get("config") or {}
    return {k: config[k] for k in PROTOCOL_KEYS if k in config and config[k] != pinned[k]}


@functools.cache
def _pinned() -> dict[str, Any]:
    """The pinned protocol settings (TrainConfig's defaults), read once."""
    from .config import TrainConfig  # lazy: read once

    pinned = TrainConfig()
    return {k: getattr(pinned, k) for k in PROTOCOL_KEYS}


def protocol_text(changes: Mapping[str, Any]) -> str:
    """``"epochs 3, batch_size 16"``, or ``"pinned"`` when nothing differs."""
    return ", ".join(f"{k} {v}" for k, v in changes.items()) or "pinned"


def backbone_name(meta: Mapping[str, Any]) -> str:
    """The run's backbone, with ``-imagenet`` / ``-pretrained`` for pretrained weights (runs from
    before backbones were an option: trifire)."""
    cfg = meta.get("config") or {}
    name = str(cfg.get("backbone") or DEFAULT_BACKBONE)
    pre = cfg.get("pretrained")
    return name + ("" if not pre else "-imagenet" if pre == "imagenet" else "-pretrained")


def method_label(meta: Mapping[str, Any]) -> str:
    """The name a run's method goes by in tables: its variant, plus the backbone when it is not
    the default (``csba-resnet18``, ``baseline-resnet18-imagenet``)."""
    bb = backbone_name(meta)
    return str(meta["variant"]) + ("" if bb == DEFAULT_BACKBONE else f"-{bb}")


def image_size(meta: Mapping[str, Any]) -> int | None:
    """Pixels per side the run trained at (dataset record, else its config); None unknown."""
    size = (meta.get("dataset") or {}).get("image_size") or (meta.get("config") or {}).get(
        "image_size"
    )
    return int(size) if size else None


def dataset_name(meta: Mapping[str, Any]) -> str:
    """The run's dataset key ("elpv", "imagefolder", ...); "?" when run.json lacks it."""
    ds = meta.get("dataset") or {}
    return str(ds.get("name") or (meta.get("config") or {}).get("dataset") or "?")


def _seed(meta: Mapping[str, Any]) -> int | None:
    seed = (meta.get("config") or {}).get("seed")
    return int(seed) if isinstance(seed, (int, float)) and not isinstance(seed, bool) else None


@dataclass(frozen=True, order=True)
class RunIdentity:
    """What a run is, apart from its seed. Equal identities = seeds of one experiment."""

    dataset: str  # dataset.name in run.json ("elpv", "imagefolder", ...)
    backbone: str  # backbone_name(): "trifire", "resnet18", "resnet18-imagenet"
    variant: str  # registered variant ("baseline", "csba", ...)
    image_size: int | None  # pixels per side the run trained and was tested at
    protocol: tuple[tuple[str, str], ...] = ()  # (setting, JSON value) differing from pinned
    head: str = ""  # csba.heads name ("csba"); "" for a variant this version does not know
    method_name: str = ""  # csba.methods name ("ldam_drw"); "" likewise

    @property
    def method(self) -> str:
        """:func:`method_label` of the identity: variant, plus a non-default backbone."""
        return self.variant + ("" if self.backbone == DEFAULT_BACKBONE else f"-{self.backbone}")

    def details(self, *, protocol: bool = False) -> str:
        """The parenthesised part of a label: ``"resnet18, 128px"`` (backbone when not the
        default; with ``protocol``, the settings that differ from the pinned ones)."""
        parts = [] if self.backbone == DEFAULT_BACKBONE else [self.backbone]
        if self.image_size:
            parts.append(f"{self.image_size}px")
        if protocol and self.protocol:
            parts.append(self.protocol_label())
        return ", ".join(parts)

    def protocol_label(self) -> str:
        """``"epochs 3, batch_size 16"`` (:func:`protocol_text` of the changed settings)."""
        return protocol_text({k: json.loads(v) for k, v in self.protocol})


def identity(meta: Mapping[str, Any]) -> RunIdentity:
    """The :class:`RunIdentity` of a run.json dictionary."""
    changes = protocol_changes(meta)
    head, method = head_and_method(meta)
    return RunIdentity(
        dataset=dataset_name(meta),
        backbone=backbone_name(meta),
        variant=str(meta.get("variant") or "?"),
        image_size=image_size(meta),
        protocol=tuple((k, json.dumps(v, sort_keys=True)) for k, v in sorted(changes.items())),
        head=head,
        method_name=method,
    )


def head_and_method(meta: Mapping[str, Any]) -> tuple[str, str]:
    """The run's head and training method: run.json's ``composition``, else (runs from before
    heads and methods were separate) what its variant name stands for; ``("", "")`` for a
    variant this version does not know."""
    comp = meta.get("composition") or {}
    if comp.get("head") and comp.get("method"):
        return str(comp["head"]), str(comp["method"])
    from .models import parse_variant  # lazy: identity stays light for the pages

    try:
        return parse_variant(str(meta.get("variant") or "?"))
    except ValueError:
        return "", ""


def run_status(meta: Mapping[str, Any]) -> str:
    """The run's stored status: ``completed``, ``cancelled``, ``interrupted``, ... (a run.json
    from before statuses were recorded ran to its end)."""
    return str(meta.get("status") or FINISHED)


def is_finished(meta: Mapping[str, Any]) -> bool:
    """The run ran to its end (not cancelled, interrupted or failed)."""
    return run_status(meta) == FINISHED


def run_label(meta: Mapping[str, Any], *, protocol: bool = False) -> str:
    """``"baseline s0 (resnet18, 128px)"``; a run that did not finish gets its status appended
    (``"baseline s0 (16px) [cancelled]"``). ``protocol``: name the changed protocol settings."""
    ident = identity(meta)
    seed = _seed(meta)
    label = ident.variant + (f" s{seed}" if seed is not None else "")
    details = ident.details(protocol=protocol)
    label += f" ({details})" if details else ""
    return label if is_finished(meta) else f"{label} [{run_status(meta)}]"


def group_label(ident: RunIdentity, n_runs: int, *, protocol: bool = False) -> str:
    """A seed group's name: ``"baseline (resnet18, 128px; mean of 3 seeds)"``."""
    details = ident.details(protocol=protocol)
    mean = f"mean of {n_runs} seeds" if n_runs > 1 else "1 seed"
    return f"{ident.variant} ({details + '; ' if details else ''}{mean})"


def group_names(idents: Sequence[RunIdentity]) -> dict[RunIdentity, str]:
    """Short unique names of seed groups for tables: the method (``csba-resnet18``), plus
    ``@<size>px`` when sizes differ, plus the protocol settings when two groups would still
    share a name (``baseline [epochs 3]``)."""
    unique = list(dict.fromkeys(idents))
    sizes = {i.image_size for i in unique}
    names = {i: i.method + (f"@{i.image_size}px" if len(sizes) > 1 else "") for i in unique}
    taken: dict[str, int] = {}
    for n in names.values():
        taken[n] = taken.get(n, 0) + 1
    for i, n in names.items():
        if taken[n] > 1 and i.protocol:
            names[i] = f"{n} [{i.protocol_label()}]"
        if taken[n] > 1 and i.dataset != unique[0].dataset:
            names[i] = f"{names[i]} ({i.dataset})"
    return names
