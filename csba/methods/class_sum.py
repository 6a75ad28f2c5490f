"""PCGrad's control: the same per-class mean losses, summed, one backward, no projection (what
the projection adds is pcgrad minus this; Yu et al., NeurIPS 2020, for the method it controls)."""

from __future__ import annotations

from .base import Method

__all__ = ["METHOD"]

METHOD = Method(
    "class_sum",
    paper="control of PCGrad (Yu et al., NeurIPS 2020): the per-class loss sum",
    description="PCGrad's control: the per-class mean losses summed, no projection",
    loss_kind="class_mean",
    step_mode="class_sum",
)
