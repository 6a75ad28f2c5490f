"""The paper's recipe: cross-entropy weighted by the pinned class weights (Class-Specific Branch
Attention paper, its Section 3; csba.losses.class_weights)."""

from __future__ import annotations

from .base import Method

__all__ = ["METHOD"]

METHOD = Method(
    "weighted",
    paper="class-weighted cross-entropy (the CSBA paper, Section 3)",
    description="cross-entropy with the pinned class weights (the paper's loss)",
    loss_kind="ce",
    weighted=True,
    cuda_graph=True,
    torchrun=True,
)
