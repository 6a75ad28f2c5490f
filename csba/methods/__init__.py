"""Training methods (docs/design.md §2): one unit per recipe in ``csba/methods/<name>.py``
(PCGrad's: ``per_class_pcgrad.py``), each a :class:`Method` with its paper in its docstring,
and the procedures they share
(:mod:`csba.methods.procedures`: PCGrad's projection, cRT's sampler and classifier reset,
LDAM's re-weighting rule, the phases). Adding a method is one unit, one line in ``METHODS``
and its known-answer test.
"""

from __future__ import annotations

from ..config import CRT_EPOCHS, CRT_LR, DRW_PATIENCE
from . import class_sum, crt, focal, ldam_drw, logit_adjust, per_class_pcgrad, weighted
from .base import Method
from .procedures import (
    Phases,
    class_balanced_indices,
    classifier_parameters,
    drw_starts,
    pcgrad,
    reset_classifier,
)

__all__ = [
    "CRT_EPOCHS",
    "CRT_LR",
    "DRW_PATIENCE",
    "METHODS",
    "Method",
    "Phases",
    "class_balanced_indices",
    "classifier_parameters",
    "drw_starts",
    "get_method",
    "list_methods",
    "method_record",
    "pcgrad",
    "reset_classifier",
]

# name -> the method (``--method``; the presets of csba.models pair each with a head)
METHODS: dict[str, Method] = {
    m.METHOD.name: m.METHOD
    for m in (weighted, focal, logit_adjust, ldam_drw, crt, per_class_pcgrad, class_sum)
}


def list_methods() -> list[str]:
    """The registered methods' names."""
    return list(METHODS)


def get_method(name: str) -> Method:
    """The method called ``name``; ValueError naming the registered ones otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}") from None


def method_record(method: str, phases: Phases, counts, cfg, model) -> dict:
    """What run.json says about how the run trained, beyond its config."""
    return get_method(method).record(phases, counts, cfg, model)
