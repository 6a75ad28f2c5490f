"""Logit adjustment (Menon et al., "Long-tail learning via logit adjustment", ICLR 2021): the
unweighted loss on logits plus tau * log(prior); tau 1 is the balanced softmax."""

from __future__ import annotations

from .base import Method

__all__ = ["LogitAdjust"]


class LogitAdjust(Method):
    def record(self, phases, counts, cfg, model):
        return {"name": self.name, "tau": cfg.la_tau}


METHOD = LogitAdjust(
    "logit_adjust",
    paper="Menon et al., Long-tail learning via logit adjustment, ICLR 2021",
    cuda_graph=True,
    torchrun=True,
)
