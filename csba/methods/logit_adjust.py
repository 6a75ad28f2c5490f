"""Logit adjustment (Menon et al., "Long-tail learning via logit adjustment", ICLR 2021): the
unweighted loss on logits plus tau * log(prior); tau 1 is the balanced softmax (Ren et al.,
NeurIPS 2020). Prediction uses the raw logits."""

from __future__ import annotations

from .base import Method

__all__ = ["LogitAdjust"]


class LogitAdjust(Method):
    def record(self, phases, counts, cfg, model):
        return {"name": self.name, "tau": cfg.la_tau}


METHOD = LogitAdjust(
    "logit_adjust",
    paper="Menon et al., Long-tail learning via logit adjustment, ICLR 2021",
    description="unweighted cross-entropy on logits + tau * log(prior)",
    loss_kind="logit_adjust",
    cuda_graph=True,
    torchrun=True,
)
