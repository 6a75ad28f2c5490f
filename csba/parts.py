"""What a run is made of (docs/design.md §1), for ``python -m csba parts`` and the pickers:
the backbone, head and method registries and the presets that name head x method pairs."""

from __future__ import annotations

from typing import Any

__all__ = ["format_parts", "parts"]


def parts() -> dict[str, Any]:
    """``{"backbones": [...], "heads": {...}, "methods": {...}, "presets": {...}}``: each head
    with its description and class limit, each method with its paper, loss, step, phases and
    capabilities, each preset with its head and method."""
    from .backbones import list_backbones
    from .heads import HEADS
    from .methods import METHODS
    from .models import PRESETS, model_info

    return {
        "backbones": list_backbones(),
        "heads": {
            name: {"description": h.description, "max_classes": h.max_classes}
            for name, h in HEADS.items()
        },
        "methods": {
            name: {
                "description": m.description,
                "paper": m.paper,
                "loss": m.loss_kind,
                "step": m.step_mode,
                "classifier": m.classifier,
                "cuda_graph": m.cuda_graph,
                "torchrun": m.torchrun,
            }
            for name, m in METHODS.items()
        },
        "presets": {
            name: {"head": head, "method": method, "description": model_info(name)["description"]}
            for name, (head, method) in PRESETS.items()
        },
    }


def format_parts(p: dict[str, Any]) -> str:
    """The registries as plain-text tables."""
    lines = ["backbones: " + ", ".join(p["backbones"]), "", "heads:"]
    for name, h in p["heads"].items():
        limit = f" (up to {h['max_classes']} classes)" if h["max_classes"] else ""
        lines.append(f"  {name:<13} {h['description']}{limit}")
    lines += ["", "methods:"]
    for name, m in p["methods"].items():
        caps = ", ".join(
            c for c, ok in (("CUDA graph", m["cuda_graph"]), ("torchrun", m["torchrun"])) if ok
        )
        lines.append(f"  {name:<13} {m['description']}")
        lines.append(f"  {'':<13} {m['paper']}")
        lines.append(
            f"  {'':<13} loss {m['loss']}, step {m['step']}, {m['classifier']} "
            f"classifier{'; ' + caps if caps else ''}"
        )
    lines += ["", "presets (any other pair trains as HEAD+METHOD, e.g. csba+ldam_drw):"]
    for name, v in p["presets"].items():
        lines.append(f"  {name:<15} = {v['head']} + {v['method']}")
    return "\n".join(lines)
