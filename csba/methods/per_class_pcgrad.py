"""PCGrad (Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020) over classes:
each class's mean loss is a task; their gradients are projected off each other where they
conflict (csba.methods.pcgrad) and summed."""

from __future__ import annotations

from .base import Method

__all__ = ["METHOD"]

METHOD = Method(
    "pcgrad",
    paper="Yu et al., Gradient Surgery for Multi-Task Learning, NeurIPS 2020",
    description="PCGrad over per-class mean losses",
    loss_kind="class_mean",
    step_mode="pcgrad",
)
