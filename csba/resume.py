"""Resume state of a run in training (docs/design.md §5): what ``train --resume`` needs to
continue from the last finished epoch with the same result as an uninterrupted run.

``<run folder>/resume/state.json`` (epoch, history, early-stopping and phase state, optimiser
hyper-parameters, scheduler) names ``state-e<epoch>.safetensors`` (weights, kept weights,
moving average, Adam moments, random-number-generator states) and holds its SHA-256. Tensors
first, JSON last, each atomically, so a process killed at any moment leaves the previous
epoch's complete state. Never a pickle. The folder goes once the run completes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from torch import Tensor

__all__ = [
    "ResumeError",
    "load_resume_state",
    "resume_dir",
    "save_resume_state",
    "state_tensors",
    "tensors_with_prefix",
]


class ResumeError(ValueError):
    """A resume state cannot be used; the message says how to start over."""


def resume_dir(run_dir: str | os.PathLike) -> Path:
    """``<run folder>/resume``."""
    return Path(run_dir) / "resume"


def state_tensors(prefix: str, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A state dict's tensors under ``prefix`` (CPU, contiguous), for one safetensors file."""
    return {f"{prefix}{k}": v.detach().cpu().contiguous() for k, v in state.items()}


def tensors_with_prefix(prefix: str, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of :func:`state_tensors`."""
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def save_resume_state(run_dir: str | os.PathLike, tensors: dict[str, Tensor], info: dict) -> None:
    """Write ``resume/state-e<epoch>.safetensors``, then ``resume/state.json`` naming it with
    its SHA-256, then remove older tensor files. ``info["epoch"]``: the epoch just finished."""
    from safetensors.torch import save_file

    from .store import _sha256, _tmp_path, atomic_write_json

    d = resume_dir(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    name = f"state-e{int(info['epoch'])}.safetensors"
    tmp = _tmp_path(d / name)
    try:
        save_file(tensors, str(tmp))
        digest = _sha256(tmp)
        os.replace(tmp, d / name)
    finally:
        tmp.unlink(missing_ok=True)
    atomic_write_json(d / "state.json", {**info, "tensors": name, "sha256": digest})
    for old in d.glob("state-e*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def load_resume_state(run_dir: str | os.PathLike) -> tuple[dict[str, Tensor], dict] | None:
    """``(tensors, info)`` of a run's resume state; None when it has none; ResumeError when the
    state is unreadable or altered."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .store import _sha256

    d = resume_dir(run_dir)
    path = d / "state.json"
    if not path.is_file():
        return None
    fix = f"delete '{d}' to train the run from scratch"
    try:
        info = json.loads(path.read_text())
        tensors_path = d / info["tensors"]
        if _sha256(tensors_path) != info["sha256"]:
            raise ResumeError(f"'{tensors_path}' does not match its checksum; {fix}")
        tensors = load_file(str(tensors_path))
    except (OSError, KeyError, TypeError, json.JSONDecodeError, SafetensorError) as e:
        raise ResumeError(f"the resume state in '{d}' is unreadable ({e}); {fix}") from None
    return tensors, info
