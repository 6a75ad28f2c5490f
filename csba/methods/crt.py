"""Classifier re-training (Kang et al., "Decoupling Representation and Classifier for
Long-Tailed Recognition", ICLR 2020): stage 1 trains the whole network with unweighted
cross-entropy; stage 2 re-initialises the classifier, freezes the backbone and re-trains the
classifier with class-balanced sampling at a constant learning rate."""

from __future__ import annotations

from .base import Method

__all__ = ["CRT"]


class CRT(Method):
    def loss(self, phase, kind, counts, weight, cfg, model):
        from ..losses import make_loss

        return make_loss("ce", None)

    def record(self, phases, counts, cfg, model):
        return {
            "name": self.name,
            "stage1_best_epoch": phases.stage1_best_epoch,
            "stage2_start": phases.start if phases.phase == "stage2" else None,
            "stage2_epochs": cfg.crt_epochs,
            "stage2_lr": cfg.crt_lr,
            "stage2_sampler": "class-balanced",
        }


METHOD = CRT(
    "crt",
    paper="Kang et al., Decoupling Representation and Classifier, ICLR 2020",
    first_phase="stage1",
)
