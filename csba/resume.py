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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "LoopState",
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


@dataclass
class LoopState:
    """Everything the epoch loop carries from one epoch to the next: the one list of what
    ``train --resume`` saves after every epoch and restores. On disk (:meth:`save`) the tensors
    go to the safetensors file under prefixes (``model.``, ``best.``, ``ema.``, ``opt.<i>.``,
    ``rng.``) and the rest to state.json, as :func:`save_resume_state` writes them."""

    epoch: int  # the last finished epoch
    config: dict  # the config fields a resumed run must share (csba.train._config_key)
    phases: dict  # csba.methods.Phases.state()
    model: dict[str, Tensor]  # weights after ``epoch``
    optimizer: dict  # the optimizer's state_dict (moments as tensors, lr as floats)
    rng: dict[str, Tensor]  # generator states: "torch", "gen" (data order), "task", "cuda"
    scheduler: dict | None = None  # the lr scheduler's state_dict (None: constant, cRT stage 2)
    best_epoch: int = 0  # epoch of the kept weights (0: none yet)
    best: dict[str, Tensor] | None = None  # the kept weights
    best_f1: float = -1.0  # best validation macro-F1 in the current phase
    ema: dict[str, Tensor] | None = None  # the moving average's state_dict
    history: list[dict] = field(default_factory=list)  # per epoch, as run.json's history
    conflict_history: list[dict] = field(default_factory=list)  # ConflictTracker.history
    finished: bool = False  # the loop's end was reached (early stop or the last epoch)
    stop_reason: str = ""
    train_seconds: float = 0.0  # training time of every session so far
    resumed_at: list[int] = field(default_factory=list)  # epochs earlier sessions stopped at
    threads: int = 0  # torch threads of the session that wrote it (results depend on them)

    def to_files(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """``(tensors, info)``: the safetensors contents and state.json's."""
        tensors = state_tensors("model.", self.model)
        for prefix, part in (("best.", self.best), ("ema.", self.ema)):
            if part is not None:
                tensors |= state_tensors(prefix, part)
        keys = {}
        for i, st in self.optimizer["state"].items():
            keys[str(i)] = list(st)
            for k, v in st.items():
                tensors[f"opt.{i}.{k}"] = torch.as_tensor(v).detach().cpu().contiguous()
        tensors |= {f"rng.{k}": v for k, v in self.rng.items()}
        groups = [
            {k: (float(v) if isinstance(v, Tensor) else v) for k, v in g.items()}
            for g in self.optimizer["param_groups"]
        ]
        skip = {"model", "best", "ema", "rng", "optimizer"}
        info = {k: v for k, v in self.__dict__.items() if k not in skip}
        info["optimizer"] = {"param_groups": groups, "state_keys": keys}
        return tensors, info

    @classmethod
    def from_files(cls, tensors: dict[str, Tensor], info: dict[str, Any]) -> LoopState:
        """The inverse of :meth:`to_files` (state.json's ``tensors``/``sha256`` are ignored)."""
        opt = dict(info["optimizer"])
        opt["state"] = {
            int(i): {k: tensors[f"opt.{i}.{k}"] for k in names}
            for i, names in opt.pop("state_keys").items()
        }
        names = set(cls.__dataclass_fields__) - {"model", "best", "ema", "rng", "optimizer"}
        return cls(
            model=tensors_with_prefix("model.", tensors),
            best=tensors_with_prefix("best.", tensors) if info.get("best_epoch") else None,
            ema=tensors_with_prefix("ema.", tensors) or None,
            rng=tensors_with_prefix("rng.", tensors),
            optimizer=opt,
            **{k: info[k] for k in names if k in info},
        )

    def save(self, run_dir: str | os.PathLike) -> None:
        save_resume_state(run_dir, *self.to_files())

    @classmethod
    def load(cls, run_dir: str | os.PathLike) -> LoopState | None:
        """The run's saved state; None without one; ResumeError when unreadable or altered."""
        found = load_resume_state(run_dir)
        return None if found is None else cls.from_files(*found)
