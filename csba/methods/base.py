"""What a training method is: :class:`Method`, one unit per recipe (``csba/methods/<name>.py``).

A method says how a run trains beyond its network: its loss in each phase, the order of the
training images in each epoch, its step (one backward of one loss, of a per-class sum, or
PCGrad's projection), its phases and what moves the run from one to the next, whether its step
can be captured once as a CUDA graph or run under torchrun, the classifier it needs (LDAM's
cosine classifier) and what it records in run.json. The training loop (csba.loop) calls these
hooks and never tests a method's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Method"]


@dataclass(frozen=True)
class Method:
    """A training recipe. Subclasses override the hooks they need (loss, epoch_order,
    after_epoch, enter_phase, record)."""

    name: str  # the key of csba.methods.METHODS (``--method``)
    paper: str = ""  # where it comes from
    description: str = ""  # one line for tables and pickers
    loss_kind: str = "ce"  # csba.losses.make_loss kind of its loss
    weighted: bool = False  # its loss carries the pinned class weights
    step_mode: str = "loss"  # csba.step.TrainStep mode: "loss" | "class_sum" | "pcgrad"
    first_phase: str = "train"  # csba.methods.Phases' first phase
    classifier: str = "linear"  # "cosine": every head builds cosine branches (LDAM)
    scale: float | None = None  # logit scale s of a cosine classifier
    # One loss for every step and phase, so a captured CUDA graph stays right.
    cuda_graph: bool = False
    # Its step is one backward of one loss over the global batch (csba.distributed).
    torchrun: bool = False
    record_name: str | None = None  # run.json's method-record name when not ``name``

    def head_kwargs(self) -> dict[str, Any]:
        """What a head needs to build this method's classifier (csba.heads)."""
        if self.classifier == "cosine":
            return {"classifier": "cosine", "scale": self.scale}
        return {}

    def loss(self, phase: str, counts: Tensor, weight: Tensor, cfg, model) -> nn.Module:
        """The training loss in ``phase``. ``counts`` (C,) training images per class;
        ``weight`` (C,) the pinned class weights on the device."""
        from ..losses import make_loss

        return make_loss(
            self.loss_kind,
            weight if self.weighted else None,
            cfg.focal_gamma,
            counts=counts,
            tau=cfg.la_tau,
        )

    def epoch_order(self, phase: str, labels: Tensor, generator: torch.Generator) -> Tensor:
        """The training images' order for one epoch, (N,) int64 indices: a shuffle."""
        return torch.randperm(len(labels), generator=generator)

    def after_epoch(self, loop, epoch: int) -> None:
        """Move the run on after ``epoch`` (csba.loop.Loop): stop on a plateau of validation
        macro-F1 (``patience`` epochs, when keeping the best weights) or at the last epoch."""
        reason = loop.stop_rule(epoch)
        if reason:
            loop.finish(reason)

    def enter_phase(self, loop, phase: str, resuming: bool = False) -> None:
        """Set the loop up for ``phase`` (its loss); ``resuming``: restored from a state."""
        loop.set_loss(phase)

    def keeps_last(self, phase: str) -> bool:
        """Whether this phase keeps its last epoch's weights whatever ``--keep`` says."""
        return False

    def record(self, phases, counts: Tensor, cfg, model) -> dict[str, Any]:
        """What run.json's ``method`` says about how the run trained, beyond its config."""
        return {"name": self.record_name or self.name}
