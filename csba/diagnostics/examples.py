"""Per-example scores (docs/diagnostics.md, "Per-example scores"): which images pull against
which class, at a run's final weights, with the same parameters, model state (eval mode,
float32) and per-class gradient sums as its Gradient Conflict Matrix (csba.diagnostics.gcm).

For an image x with label y, g_x is the gradient of its cross-entropy over every trainable
parameter, S_a the GCM's sum of the per-example gradients of class a over its n_a images.

* ``alignment`` (N, C): cos(g_x, mean gradient of class a). For x inside the GCM's own sum and
  a = y, the mean without x, (S_a - g_x) / (n_a - 1) (leave-one-out: NaN when n_a = 1); for
  every other pair (other classes, test images, training images outside a ``--per-class``
  subset), S_a / n_a. ``rule`` (N,) records which (1: leave-one-out on its own class, 0: none).
  "x pulls against class b" is a negative alignment[x, b]; "x is the least aligned with its own
  class" a low alignment[x, y].
* ``self_influence`` (N,): |g_x|^2, TracIn at one checkpoint (Pruthi et al., NeurIPS 2020).
* ``confidence`` (N,): the model's probability of the label, softmax(logits)[y];
  ``prediction`` (N,): the model's class, argmax of the logits.

Per-example gradients come from ``torch.func`` (``vmap(grad(...))`` over a chunk of images with
``functional_call``), so memory is bounded by ``chunk`` x P floats, not by the dataset. Stored
per run in ``example_scores.safetensors`` (never pickle; read lazily by :func:`load_scores`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._utils import eval_mode, float32_compute, model_device

__all__ = [
    "FILE",
    "SCORES",
    "ExampleScores",
    "example_scores",
    "load_scores",
    "save_scores",
]

FILE = "example_scores.safetensors"
VERSION = 1
SCORES = ("self_influence", "own_alignment", "confidence")  # rankable, as the pages name them
FIELDS = ("alignment", "self_influence", "confidence", "labels", "rule", "prediction")
CHUNK = 16  # images per vmap chunk: memory CHUNK x P float32 (trifire csba: 16 x 1.8 M = 115 MB)


@dataclass
class ExampleScores:
    """The scores of one split's images, in split order (arrays on the CPU)."""

    alignment: np.ndarray  # (N, C) float32 cosines, NaN where undefined
    self_influence: np.ndarray  # (N,) float32 |g_x|^2
    confidence: np.ndarray  # (N,) float32 p(y | x)
    labels: np.ndarray  # (N,) int64
    rule: np.ndarray  # (N,) int8: 1 = own class leave-one-out, 0 = class means only
    prediction: np.ndarray  # (N,) int64 argmax of the logits

    @property
    def own_alignment(self) -> np.ndarray:
        """(N,) alignment with the image's own class (low: the least aligned)."""
        return self.alignment[np.arange(len(self.labels)), self.labels]


def _per_example_grads(model: nn.Module, names: list[str], x: Tensor, y: Tensor):
    """(B, P) float32 flattened per-example gradients of CE over parameters ``names`` and the
    (B, C) logits, by torch.func (the model in eval mode: examples independent)."""
    from torch.func import functional_call, grad, vmap

    params = {n: p.detach() for n, p in model.named_parameters() if n in names}

    def loss(p, xi, yi):
        out = functional_call(model, p, (xi[None],))
        return F.cross_entropy(out.float(), yi[None], reduction="sum"), out[0]

    grads, logits = vmap(grad(loss, has_aux=True), in_dims=(None, 0, 0))(params, x, y)
    flat = torch.cat([grads[n].reshape(x.shape[0], -1).float() for n in names], dim=1)
    return flat, logits.float()


@contextlib.contextmanager
def _plain_cpu_kernels(device: torch.device) -> Iterator[None]:
    """On the CPU, PyTorch's own kernels instead of oneDNN's while per-sample gradients are
    taken: on AVX-512 CPUs oneDNN's batched first-layer weight gradient under vmap came out 5%
    off for one image of four (torch 2.14.1; tests/test_example_scores.py's plain loop found
    it), the plain kernels agree with the loop to 1e-6. A process-wide flag, restored after."""
    if device.type != "cpu":
        yield
        return
    was = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = was


def example_scores(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    sums: Tensor,
    counts: np.ndarray,
    inside: Iterable[bool] | None = None,
    *,
    chunk: int = CHUNK,
    progress: Iterator | None = None,
) -> ExampleScores:
    """Scores of the images of ``batches`` ((images, labels) float inputs, no augmentation)
    against the GCM's per-class gradient sums ``sums`` (C, P) over ``counts`` (C,) images.
    ``inside`` (one bool per image, in order; None: none): the image is in the GCM's own sum,
    so its own class is taken leave-one-out."""
    device = model_device(model)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    # float64: a leave-one-out cosine subtracts |g_x|^2 from g_x . S_a, which nearly cancel
    # when x dominates its class's sum (the cost: a (chunk, P) x (P, C) product per chunk)
    S = sums.to(device=device, dtype=torch.float64)  # (C, P)
    s_sq = (S**2).sum(1)  # (C,) |S_a|^2
    n = torch.as_tensor(np.asarray(counts), dtype=torch.float64, device=device)
    inside_iter = iter(inside) if inside is not None else None
    parts: list[tuple[Tensor, ...]] = []
    with eval_mode(model), float32_compute(device), _plain_cpu_kernels(device):
        for xb, yb in batches:
            for i in range(0, len(yb), chunk):
                x = xb[i : i + chunk].to(device=device, dtype=torch.float32)
                y = torch.as_tensor(yb[i : i + chunk], dtype=torch.int64, device=device)
                inn = [bool(next(inside_iter)) for _ in range(len(y))] if inside_iter else None
                parts.append(_chunk_scores(model, names, x, y, S, s_sq, n, inn))
                if progress is not None:
                    next(progress, None)
    if not parts:
        empty, ints = np.zeros(0, np.float32), np.zeros(0, np.int64)
        C = S.shape[0]
        return ExampleScores(
            np.zeros((0, C), np.float32), empty, empty, ints, ints.astype(np.int8), ints
        )
    cat = [torch.cat([p[k] for p in parts]).cpu() for k in range(6)]
    return ExampleScores(
        cat[0].float().numpy(),
        cat[1].float().numpy(),
        cat[2].float().numpy(),
        cat[3].numpy().astype(np.int64),
        cat[4].numpy().astype(np.int8),
        cat[5].numpy().astype(np.int64),
    )


def _chunk_scores(model, names, x, y, S, s_sq, n, inside) -> tuple[Tensor, ...]:
    """(alignment (B, C), |g|^2 (B,), confidence (B,), labels (B,), rule (B,), prediction (B,))
    of one chunk."""
    g, logits = _per_example_grads(model, names, x, y)  # (B, P), (B, C)
    g = g.double()
    dots = g @ S.T  # (B, C) g_x . S_a
    g_sq = (g**2).sum(1)  # (B,)
    g_norm = g_sq.sqrt()[:, None]
    with torch.no_grad():
        cos = dots / (g_norm * s_sq.sqrt()[None, :])
        rule = torch.zeros(len(y), dtype=torch.int8, device=y.device)
        if inside is not None and any(inside):
            rows = torch.as_tensor(inside, device=y.device).nonzero().flatten()
            a = y[rows]
            own = dots[rows, a]
            rest_sq = (s_sq[a] - 2 * own + g_sq[rows]).clamp_min(0.0)  # |S_a - g_x|^2
            loo = (own - g_sq[rows]) / (g_norm[rows, 0] * rest_sq.sqrt())
            loo = torch.where(n[a] > 1, loo, torch.full_like(loo, math.nan))
            cos[rows, a] = loo
            rule[rows] = 1
        conf = torch.softmax(logits, 1).gather(1, y[:, None])[:, 0]
    return cos.float(), g_sq.float(), conf, y, rule, logits.argmax(1)


def save_scores(run_dir: str | Path, scores: dict[str, ExampleScores], info: dict) -> Path:
    """Write ``example_scores.safetensors`` (tensors ``<split>.<name>``; ``info`` as string
    metadata: classes, the GCM's subset) atomically; returns its path."""
    import json
    import os

    from safetensors.torch import save_file

    from ..store import _tmp_path

    tensors = {}
    for split, s in scores.items():
        for name in FIELDS:
            tensors[f"{split}.{name}"] = torch.from_numpy(np.ascontiguousarray(getattr(s, name)))
    path = Path(run_dir) / FILE
    tmp = _tmp_path(path)
    meta = {"version": str(VERSION), "info": json.dumps(info)}
    try:
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_scores(run_dir: str | Path, split: str) -> ExampleScores | None:
    """One split's scores from a run folder, read lazily (only that split's tensors); None
    when the run has none for it."""
    from safetensors import safe_open

    path = Path(run_dir) / FILE
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        if any(f"{split}.{name}" not in keys for name in FIELDS):
            return None  # none for this split, or an older file: diagnose again
        get = lambda name: f.get_tensor(f"{split}.{name}").numpy()  # noqa: E731
        return ExampleScores(*(get(name) for name in FIELDS))
