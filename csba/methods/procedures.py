"""Training procedures beyond a loss (docs/design.md §2): PCGrad's projection over per-class
gradients, the class-balanced sampler and classifier re-training of cRT, the rule that places
LDAM's deferred re-weighting, and where a run is in its method's phases. The method units
(``csba/methods/<name>.py``) and csba.train use them; each is small and tested alone.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = [
    "CRT_EPOCHS",
    "CRT_LR",
    "DRW_PATIENCE",
    "Phases",
    "class_balanced_indices",
    "classifier_parameters",
    "drw_starts",
    "pcgrad",
    "reset_classifier",
]

from ..config import CRT_EPOCHS, CRT_LR, DRW_PATIENCE


def pcgrad(grads: list[Tensor], generator: torch.Generator | None = None) -> Tensor:
    """PCGrad (Yu et al., NeurIPS 2020, their Algorithm 1): each task gradient g_i (flat, (P,))
    is projected, in a random order of the other tasks, off every original g_j it conflicts
    with (g_i . g_j < 0): g_i <- g_i - (g_i . g_j / |g_j|^2) g_j. Returns the sum of the
    projected gradients. Float32 arithmetic; a zero g_j is skipped."""
    if not grads:
        raise ValueError("pcgrad needs at least one gradient")
    g = torch.stack([t.float() for t in grads])  # (T, P)
    sq = (g * g).sum(1)  # (T,)
    out = g.clone()
    n = len(grads)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        order = torch.randperm(len(others), generator=generator).tolist() if others else []
        for k in order:
            j = others[k]
            dot = out[i] @ g[j]
            if dot < 0 and sq[j] > 0:
                out[i] -= (dot / sq[j]) * g[j]
    return out.sum(0)


def class_balanced_indices(labels: Tensor, generator: torch.Generator) -> Tensor:
    """One epoch of class-balanced sampling (Kang et al.): len(labels) draws with replacement,
    each picking a class uniformly (among those present) and then one of its images uniformly.
    labels (N,) int64 on the CPU -> indices (N,) int64."""
    counts = torch.bincount(labels)
    per_sample = 1.0 / counts[labels].double()
    return torch.multinomial(per_sample, len(labels), replacement=True, generator=generator)


def classifier_parameters(model: nn.Module) -> list[str]:
    """Names of the classifier's parameters (the head says: csba.heads.HeadNet)."""
    return model.classifier_parameter_names()


def reset_classifier(model: nn.Module) -> None:
    """Re-initialise the classifier as at construction (cRT stage 2; csba.heads.HeadNet)."""
    model.reset_classifier()


def drw_starts(val_f1: list[float], patience: int = DRW_PATIENCE) -> bool:
    """LDAM-DRW's re-weighting epoch, chosen on validation: re-weighting starts after the
    first epoch at which validation macro-F1 (per epoch of the unweighted phase, ``val_f1``)
    has not improved on its best for ``patience`` epochs."""
    if len(val_f1) <= patience:
        return False
    best_at = max(range(len(val_f1)), key=lambda i: (val_f1[i], -i))
    return len(val_f1) - 1 - best_at >= patience


class Phases:
    """Where a run is in its method's procedure (docs/design.md §2), and the rules that move it.

    ``phase``: "train" for one-phase methods; LDAM-DRW: "ldam" (unweighted) then "drw"
    (re-weighted); cRT: "stage1" (whole model) then "stage2" (classifier only). Early stopping
    and the kept weights count only within the current phase.
    """

    def __init__(self, method: str):
        self.method = method
        from . import get_method

        self.phase = get_method(method).first_phase
        self.start = 1  # first epoch of the current phase
        self.drw_epoch: int | None = None  # LDAM-DRW: first re-weighted epoch
        self.stage1_best_epoch: int | None = None  # cRT: the stage-1 weights stage 2 starts from

    def state(self) -> dict:
        return dict(vars(self))

    def load(self, d: dict) -> None:
        for k, v in d.items():
            setattr(self, k, v)
