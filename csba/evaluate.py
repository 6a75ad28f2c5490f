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

__all__ = ["classification_metrics", "predict"]


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
) -> np.ndarray:
    """Class probabilities (N, C) float64 for uint8 images (N, c, S, S), in eval mode.

    Stored metrics always come from float32 (the default) so re-evaluating a run reproduces them,
    whatever precision it was trained in; ``bf16=True`` (bfloat16 autocast, channels_last) is
    only for the per-epoch validation that drives early stopping. The model's train/eval mode is
    restored afterwards.
    """
    was_training = model.training
    model.eval()
    device = torch.device(device)
    out = []
    try:
        for chunk in images.split(batch_size):
            x = normalize(chunk.to(device), mean, std)
            if bf16:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(x)
            out.append(torch.softmax(logits.float(), dim=1).double().cpu())
    finally:
        model.train(was_training)
    if not out:
        return np.zeros((0, 0))
    return torch.cat(out).numpy()


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
) -> tuple[dict, np.ndarray]:
    """Metrics and probabilities (N, C) of ``model`` on one split (see :func:`predict`)."""
    probs = predict(model, split.images, mean, std, device=device, bf16=bf16)
    y_true = split.labels.numpy()
    y_pred = probs.argmax(1) if len(probs) else np.zeros(0, dtype=np.int64)
    return classification_metrics(y_true, y_pred, classes), probs
