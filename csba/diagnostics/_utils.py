"""Shared plumbing for the diagnostics: eval-mode guard, float32 guard, input checks, JSON."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor, nn


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode; restore each submodule's own flag afterwards.

    ``model.train(flag)`` would overwrite the flag of every child with one value, so the flags
    are saved and restored per module (a frozen BatchNorm kept in eval inside a training model
    stays in eval).
    """
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield model
    finally:
        for m, was_training in modes:
            m.training = was_training


@contextlib.contextmanager
def float32_compute(device: torch.device) -> Iterator[None]:
    """Disable autocast on the CPU and on ``device`` so that everything runs in float32."""
    with contextlib.ExitStack() as stack:
        for device_type in dict.fromkeys(("cpu", device.type)):
            # RuntimeError/ValueError: a device type autocast does not know; nothing to disable.
            with contextlib.suppress(RuntimeError, ValueError):
                stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
        yield


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (CPU for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def as_input(x: Tensor, device: torch.device) -> Tensor:
    """Move an image batch to ``device`` as float32, refusing integer images.

    Integer (e.g. uint8) images would need the data pipeline's normalisation, which the
    diagnostics cannot guess; the caller converts them first.
    """
    if not torch.is_tensor(x):
        x = torch.as_tensor(x)
    if not x.is_floating_point():
        raise TypeError(
            f"diagnostics need float image tensors (got {x.dtype}); convert and normalise them "
            "the way the model was trained first"
        )
    x = x.to(device=device, dtype=torch.float32)
    if x.is_inference():  # tensors made under inference_mode cannot be saved for backward
        x = x.clone()
    return x


def as_labels(y: Tensor | np.ndarray | list, num_classes: int) -> Tensor:
    """Labels as a 1-D int64 CPU tensor, checked to lie in [0, num_classes)."""
    y = torch.as_tensor(y).reshape(-1).to(device="cpu", dtype=torch.int64)
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}); got values from {int(y.min())} "
            f"to {int(y.max())}"
        )
    return y


def to_jsonable(obj):
    """Convert arrays, numpy scalars, tuples and dicts to plain JSON types; NaN/inf -> None.

    The result passes ``json.dumps(..., allow_nan=False)``.
    """
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if torch.is_tensor(obj):
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if obj is None or isinstance(obj, str):
        return obj
    raise TypeError(f"cannot convert {type(obj).__name__} to JSON")


def off_diagonal_upper(matrix: np.ndarray) -> np.ndarray:
    """Finite values of the strict upper triangle of a square matrix, (n_pairs,)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    vals = matrix[np.triu_indices(matrix.shape[0], k=1)]
    return vals[np.isfinite(vals)]


def nan_mean(values: np.ndarray) -> float:
    """Mean of the finite values, NaN when there are none (no warning)."""
    return float(values.mean()) if values.size else math.nan


def nan_std(values: np.ndarray) -> float:
    """Population standard deviation (ddof 0) of the finite values, NaN when there are none."""
    return float(values.std()) if values.size else math.nan


def off_diagonal_stats(matrix: np.ndarray) -> tuple[float, float]:
    """Mean and population std of a conflict matrix's finite off-diagonal upper triangle."""
    vals = off_diagonal_upper(matrix)
    return nan_mean(vals), nan_std(vals)


def sorted_pairs(matrix: np.ndarray, classes) -> list[tuple[str, str, float]]:
    """Every class pair (i < j) with a finite value, most negative (most adversarial) first."""
    m = np.asarray(matrix, dtype=np.float64)
    c = m.shape[0]
    pairs = [
        (classes[i], classes[j], float(m[i, j]))
        for i in range(c)
        for j in range(i + 1, c)
        if np.isfinite(m[i, j])
    ]
    return sorted(pairs, key=lambda t: t[2])  # stable: ties keep matrix order
