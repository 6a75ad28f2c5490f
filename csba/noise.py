"""Label noise for the label-error experiments (docs/diagnostics.md): a share of the training
split's labels moved to another class after the split, seeded; the folder on disk and the
validation and test labels stay clean. ``train --label-noise R --label-noise-seed S`` applies
it; run.json's ``dataset.label_noise`` records the moved positions (indices into the training
split), their original and new labels, and :func:`csba.runs.load_run_and_data` applies that
record again wherever the data is rebuilt."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

__all__ = ["apply_label_noise", "apply_recorded_noise", "flip_labels"]


def flip_labels(labels: np.ndarray, rate: float, seed: int, num_classes: int) -> dict:
    """``{"rate", "seed", "flipped", "from", "to"}``: round(rate * N) positions drawn without
    replacement, each moved to a class drawn uniformly among the other C - 1."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"label noise must be in [0, 1), got {rate}")
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    n = round(rate * len(labels))
    idx = np.sort(rng.choice(len(labels), size=n, replace=False)).astype(np.int64)
    shift = rng.integers(1, num_classes, size=n)  # 1..C-1: never the same class
    new = (labels[idx] + shift) % num_classes
    return {
        "rate": float(rate),
        "seed": int(seed),
        "flipped": idx.tolist(),
        "from": labels[idx].tolist(),
        "to": new.tolist(),
    }


def apply_recorded_noise(bundle, record: dict):
    """The bundle with the recorded training labels moved (a new bundle; the input stays)."""
    labels = bundle.train.labels.clone()
    idx = torch.as_tensor(record["flipped"], dtype=torch.int64)
    if len(idx) and (
        int(idx.max()) >= len(labels)
        or not torch.equal(labels[idx], torch.as_tensor(record["from"]))
    ):
        raise ValueError("the recorded label noise does not fit this training split")
    labels[idx] = torch.as_tensor(record["to"], dtype=labels.dtype)
    train = dataclasses.replace(bundle.train, labels=labels)
    return dataclasses.replace(bundle, train=train, label_noise=dict(record))


def apply_label_noise(bundle, rate: float, seed: int):
    """The bundle with round(rate * N) training labels moved (:func:`flip_labels`)."""
    record = flip_labels(bundle.train.labels.numpy(), rate, seed, bundle.num_classes)
    return apply_recorded_noise(bundle, record)
