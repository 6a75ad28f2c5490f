"""Classifier re-training (Kang et al., "Decoupling Representation and Classifier for
Long-Tailed Recognition", ICLR 2020): stage 1 trains the whole network with unweighted
cross-entropy; once it stops (early stopping or the last epoch), stage 2 starts from its best
weights, re-initialises the head's classifier (csba.heads: for gated heads, their gates too),
freezes the backbone (BatchNorm statistics too) and re-trains the classifier for ``crt_epochs``
with class-balanced sampling at a constant learning rate ``crt_lr``, keeping its last epoch."""

from __future__ import annotations

from .base import Method
from .procedures import class_balanced_indices

__all__ = ["CRT"]


class CRT(Method):
    def epoch_order(self, phase, labels, generator):
        if phase == "stage2":
            return class_balanced_indices(labels, generator)
        return super().epoch_order(phase, labels, generator)

    def after_epoch(self, loop, epoch):
        if loop.phases.phase == "stage2":
            if epoch - loop.phases.start + 1 >= loop.cfg.crt_epochs:
                loop.finish(f"cRT: {loop.cfg.crt_epochs} classifier epochs after stage 1")
            return
        reason = loop.stop_rule(epoch)
        if reason:  # stage 1 is over: its reason stands until stage 2 ends
            loop.stop_reason = reason
            loop.enter("stage2", epoch + 1)

    def enter_phase(self, loop, phase, resuming=False):
        if phase == "stage2":
            loop.retrain_classifier(loop.cfg.crt_lr, resuming)
        loop.set_loss(phase)

    def keeps_last(self, phase):
        return phase == "stage2"

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
    description="unweighted training, then the classifier re-trained class-balanced",
    first_phase="stage1",
)
