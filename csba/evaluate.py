"""Prediction and metrics (scikit-learn's) on any split."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)
from torch import nn

from .data import ImageSet, normalize
from .progress import progress_bar

__all__ = ["classification_metrics", "predict", "prediction_record", "tta_views"]


def tta_views(rot90: bool) -> int:
    """Test-time views that mirror the training augmentation: the 8 symmetries of the square
    (flips x 90-degree rotations) for EL cells, else the 4 flip combinations."""
    return 8 if rot90 else 4


def _view(x: torch.Tensor, v: int) -> torch.Tensor:
    """View ``v`` of a batch (B, c, S, S): v % 4 picks the flips, v // 4 a quarter turn."""
    if v // 4:
        x = x.transpose(2, 3)  # with the flips below this covers the four odd symmetries
    if v % 2:
        x = x.flip(3)
    if (v // 2) % 2:
        x = x.flip(2)
    return x


@torch.no_grad()
def predict(
    model: nn.Module,
    images: torch.Tensor,
    mean: list[float],
    std: list[float],
    *,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    bf16: bool = False,
    views: int = 1,
    progress: str | None = None,
) -> np.ndarray:
    """Class probabilities (N, C) float64 for uint8 images (N, c, S, S), in eval mode.

    Stored metrics always come from float32 (the default) so re-evaluating a run reproduces them,
    whatever precision it was trained in; ``bf16=True`` (bfloat16 autocast, channels_last) is
    only for the per-epoch validation that drives early stopping. ``views`` > 1 is test-time
    augmentation: the softmax averaged over the first ``views`` of the 8 square symmetries
    (identity, h-flip, v-flip, both, then the same after a transpose; 4 = flips only, 8 = all,
    for square images). The model's train/eval mode is restored afterwards. ``progress``: a
    label for a tqdm bar on stderr over the images (None: silent).
    """
    if views not in (1, 2, 4, 8):
        raise ValueError(f"views must be 1, 2, 4 or 8, got {views}")
    if views > 4 and images.shape[-1] != images.shape[-2]:
        raise ValueError(f"{views} views need square images, got {tuple(images.shape[-2:])}")
    was_training = model.training
    model.eval()
    device = torch.device(device)
    out = []
    # Stored metrics must be float32 on a GPU too: TF32 convolutions/matmuls (PyTorch's default
    # for cuDNN) round inputs to 10 mantissa bits, enough to flip a near-tie against the CPU.
    tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    if device.type == "cuda" and not bf16:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    bar = progress_bar(total=len(images), desc=progress, unit="img", enabled=progress is not None)
    try:
        for chunk in images.split(batch_size):
            x = normalize(chunk.to(device), mean, std)
            if bf16:
                x = x.contiguous(memory_format=torch.channels_last)
            probs = None
            for v in range(views):
                xv = x
                if v:  # the identity view keeps x as it is, so views=1 is the plain forward
                    fmt = torch.channels_last if bf16 else torch.contiguous_format
                    xv = _view(x, v).contiguous(memory_format=fmt)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    logits = model(xv)
                p = torch.softmax(logits.float(), dim=1).double()
                probs = p if probs is None else probs + p
            out.append((probs / views).cpu())
            bar.update(len(chunk))
    finally:
        bar.close()
        model.train(was_training)
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    if not out:
        return np.zeros((0, 0))
    return torch.cat(out).numpy()


def prediction_record(labels: torch.Tensor, probs: np.ndarray) -> dict:
    """What run.json stores of a split's predictions: labels, argmax and 6-decimal probs."""
    return {
        "y_true": labels.tolist(),
        "y_pred": probs.argmax(1).tolist(),
        "probs": np.round(probs, 6).tolist(),
    }


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    """accuracy, balanced accuracy, macro-F1, per-class P/R/F1/support and the confusion matrix.

    ``per_class`` maps class name -> {precision, recall, f1, support}; confusion_matrix rows are
    true classes, columns predictions. A class never predicted has precision 0 (zero_division=0).
    """
    labels = list(range(len(classes)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "n": len(y_true),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred))
        if len(set(np.asarray(y_true).tolist())) > 0
        else float("nan"),
        "macro_f1": float(
            f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)
        ),
        "per_class": {
            c: {
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f[i]),
                "support": int(s[i]),
            }
            for i, c in enumerate(classes)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def evaluate_split(
    model: nn.Module,
    split: ImageSet,
    classes: list[str],
    mean: list[float],
    std: list[float],
    *,
    device: str | torch.device = "cpu",
    bf16: bool = False,
    views: int = 1,
    progress: str | None = None,
) -> tuple[dict, np.ndarray]:
    """Metrics and probabilities (N, C) of ``model`` on one split (see :func:`predict`)."""
    probs = predict(
        model, split.images, mean, std, device=device, bf16=bf16, views=views, progress=progress
    )
    y_true = split.labels.numpy()
    y_pred = probs.argmax(1) if len(probs) else np.zeros(0, dtype=np.int64)
    return classification_metrics(y_true, y_pred, classes), probs
