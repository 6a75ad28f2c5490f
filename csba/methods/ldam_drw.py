"""LDAM-DRW (Cao et al., "Learning Imbalanced Datasets with Label-Distribution-Aware Margin
Loss", NeurIPS 2019): cosine-classifier logits with per-class margins C / n_c^(1/4) (largest
0.5) at scale s, unweighted first ("ldam"), then re-weighted with the effective number of
samples ("drw") once validation macro-F1 stops improving (csba.methods.drw_starts)."""

from __future__ import annotations

from .base import Method

__all__ = ["LDAMDRW"]


class LDAMDRW(Method):
    def loss(self, phase, kind, counts, weight, cfg, model):
        from ..losses import effective_number_weights, make_loss

        w = effective_number_weights(counts).to(weight.device) if phase == "drw" else None
        return make_loss("ldam", w, counts=counts, scale=model.scale)

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
    first_phase="ldam",
    torchrun=True,  # one loss per step; the phase change swaps it, so no captured graph
)
