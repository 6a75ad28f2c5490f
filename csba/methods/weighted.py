"""The paper's recipe: the network's own loss (cross-entropy, or focal for the focal variant)
weighted by the pinned class weights (Class-Specific Branch Attention paper, its Section 3;
focal loss: Lin et al., ICCV 2017)."""

from __future__ import annotations

from .base import Method

__all__ = ["Weighted"]


class Weighted(Method):
    def loss(self, phase, kind, counts, weight, cfg, model):
        from ..losses import make_loss

        return make_loss(kind, weight, cfg.focal_gamma)


METHOD = Weighted(
    "weighted",
    paper="class-weighted cross-entropy (the CSBA paper); focal loss (Lin et al., ICCV 2017)",
    cuda_graph=True,
    torchrun=True,
)
