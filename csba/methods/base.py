"""What a training method is: :class:`Method`, one unit per recipe (``csba/methods/<name>.py``).

A method says how a run trains beyond its network: its loss in each phase, its step (one
backward of one loss, of a per-class sum, or PCGrad's projection), its first phase, whether its
step can be captured once as a CUDA graph or run under torchrun, and what it records in
run.json. csba.train asks the method instead of testing its name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

__all__ = ["Method"]


@dataclass(frozen=True)
class Method:
    """A training recipe. Subclasses override :meth:`loss` and :meth:`record` as needed."""

    name: str  # the key of csba.methods.METHODS and of run.json's method record
    paper: str = ""  # where it comes from
    step_mode: str = "loss"  # csba.step.TrainStep mode: "loss" | "class_sum" | "pcgrad"
    first_phase: str = "train"  # csba.methods.Phases' first phase
    # One loss for every step and phase, so a captured CUDA graph stays right.
    cuda_graph: bool = False
    # Its step is one backward of one loss over the global batch (csba.distributed).
    torchrun: bool = False

    def loss(self, phase: str, kind: str, counts: Tensor, weight: Tensor, cfg, model) -> nn.Module:
        """The training loss in ``phase``. ``kind``: the network's own loss (csba.losses kind,
        e.g. "ce", "focal"); ``counts`` (C,) training images per class; ``weight`` (C,) the
        pinned class weights on the device."""
        from ..losses import make_loss

        return make_loss(kind, None, cfg.focal_gamma, counts=counts, tau=cfg.la_tau)

    def record(self, phases, counts: Tensor, cfg, model) -> dict[str, Any]:
        """What run.json's ``method`` says about how the run trained, beyond its config."""
        return {"name": self.name}
