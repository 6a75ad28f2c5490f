"""LDAM-DRW (Cao et al., "Learning Imbalanced Datasets with Label-Distribution-Aware Margin
Loss", NeurIPS 2019): a cosine classifier at scale s = 30 (every head builds its branches as
one, csba.heads) with per-class margins C / n_c^(1/4) (largest 0.5), unweighted first
("ldam"), then re-weighted with the effective number of samples ("drw") once validation
macro-F1 stops improving for ``drw_patience`` epochs (csba.methods.drw_starts)."""

from __future__ import annotations

from .base import Method
from .procedures import drw_starts

__all__ = ["LDAMDRW"]


class LDAMDRW(Method):
    def loss(self, phase, counts, weight, cfg, model):
        from ..losses import effective_number_weights, make_loss

        w = effective_number_weights(counts).to(weight.device) if phase == "drw" else None
        return make_loss("ldam", w, counts=counts, scale=model.scale)

    def after_epoch(self, loop, epoch):
        phase = loop.phases.phase
        if phase == "ldam" and epoch >= loop.cfg.epochs:
            loop.finish(f"reached {loop.cfg.epochs} epochs before re-weighting")
        elif phase == "ldam" and drw_starts(loop.phase_f1(), loop.cfg.drw_patience):
            # re-weighting from the next epoch on; early stopping counts from there
            loop.enter("drw", epoch + 1)
        else:
            super().after_epoch(loop, epoch)

    def enter_phase(self, loop, phase, resuming=False):
        if phase == "drw" and not resuming:
            loop.phases.drw_epoch = loop.phases.start
        loop.set_loss(phase)

    def record(self, phases, counts, cfg, model):
        from ..losses import effective_number_weights, ldam_margins

        return {
            "name": self.name,
            "margins": ldam_margins(counts).tolist(),
            "scale": model.scale,
            "drw_epoch": phases.drw_epoch,
            "drw_patience": cfg.drw_patience,
            "drw_weights": effective_number_weights(counts).tolist(),
        }


METHOD = LDAMDRW(
    "ldam_drw",
    paper="Cao et al., Label-Distribution-Aware Margin Loss, NeurIPS 2019",
    description="LDAM margins on a cosine classifier (s = 30), deferred re-weighting",
    loss_kind="ldam",
    first_phase="ldam",
    classifier="cosine",
    scale=30.0,
    torchrun=True,  # one loss per step; the phase change swaps it, so no captured graph
)
