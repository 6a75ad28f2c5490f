"""Focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017): cross-entropy
down-weighted by (1 - p_y)^gamma (``--focal-gamma``, 2), alpha = the pinned class weights. The
paper trains its focal variant this way; its run.json method record says "weighted" (the
class-weighted procedure), as before methods were units."""

from __future__ import annotations

from .base import Method

__all__ = ["METHOD"]

METHOD = Method(
    "focal",
    paper="Lin et al., Focal Loss for Dense Object Detection, ICCV 2017",
    description="focal loss (gamma 2, alpha = the pinned class weights)",
    loss_kind="focal",
    weighted=True,
    cuda_graph=True,
    torchrun=True,
    record_name="weighted",
)
