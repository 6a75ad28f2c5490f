"""Typicality: does an image look like what a run was trained on? (out-of-distribution score)

A run's model is trusted only on images like its training data; a photograph shown to an ELPV
cell classifier still gets a confident-looking prediction. This module gives every run a small
reference, fitted on the run's own data at diagnose time, and scores any image against it.

Score (``method`` "min_class_diag_mahalanobis", version 1)
    f(x) = GAP(Z(x)), the (D,) = (768,) global-average-pooled backbone output (the same vector
    :mod:`csba.diagnostics.representation` uses for class-mean angles). From the training split:
    the class means mu_c (C, D) and one pooled within-class variance per channel sigma^2 (D,)
    (diagonal; no full covariance, so the file stays a few tens of KB). The score of x is

        s(x) = min_c  sqrt( mean_d (f_d(x) - mu_{c,d})^2 / sigma_d^2 )

    i.e. the root-mean-square z-score to the nearest class mean (about 1 for a typical training
    image, larger the further away). Cosine distance to the nearest class mean was also tried;
    it separated photographs from EL cells less well on the shipped runs (see the report).
Cut
    The 99th percentile of the validation split's scores: an image scoring above it is
    ``outside`` (about 1% of in-distribution images are flagged by construction).

Files in the run folder (safetensors + JSON, never pickle): ``typicality.safetensors`` with
``class_means`` (C, D), ``variance`` (D,), ``val_quantiles`` (201,) (the validation scores'
quantiles at 0, 0.5, ..., 100 %) all float32; ``typicality.json`` with method, version,
cut_percentile, cut, n_train, n_val, feature_dim, classes.

* :func:`fit_typicality` (features -> :class:`Typicality`), :meth:`Typicality.score`;
* :func:`compute_typicality` (model + dataset bundle), :func:`save_typicality`,
  :func:`load_typicality`, :func:`ensure_typicality` (backfill a run folder);
* :func:`score_image` (a run + one image -> :class:`TypicalityResult`).

``python -m csba.typicality RUN_DIR ... [--force]`` backfills run folders; ``--measure`` prints
each run's cut, the fraction of its test split flagged and the sample photographs' scores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "CUT_PERCENTILE",
    "JSON_FILE",
    "METHOD",
    "TENSOR_FILE",
    "Typicality",
    "TypicalityError",
    "TypicalityResult",
    "compute_typicality",
    "ensure_typicality",
    "features",
    "fit_typicality",
    "load_typicality",
    "measure",
    "save_typicality",
    "score_image",
]

METHOD = "min_class_diag_mahalanobis"
VERSION = 1
CUT_PERCENTILE = 99.0
TENSOR_FILE = "typicality.safetensors"
JSON_FILE = "typicality.json"
QUANTILE_LEVELS = np.linspace(0.0, 100.0, 201)  # percent
BATCH_SIZE = 64
_EPS = 1e-6  # variance floor (relative to the mean variance) for dead channels


class TypicalityError(ValueError):
    """A missing, corrupt or mismatched typicality file, or bad input (one-line message)."""


@dataclass
class Typicality:
    """A run's reference for :func:`score_image` (see the module docstring for the score)."""

    class_means: np.ndarray  # (C, D) float64
    variance: np.ndarray  # (D,) float64, pooled within-class, floored
    val_quantiles: np.ndarray  # (201,) float64, validation scores at QUANTILE_LEVELS
    cut: float  # validation score at CUT_PERCENTILE
    n_train: int
    n_val: int
    classes: list[str] | None = None
    method: str = METHOD
    cut_percentile: float = CUT_PERCENTILE
    version: int = VERSION

    @property
    def feature_dim(self) -> int:
        return int(self.class_means.shape[1])

    def score(self, feats: np.ndarray | Tensor) -> np.ndarray:
        """Scores (N,) float64 of features (N, D) (or one (D,) vector -> (1,))."""
        f = _as_features(feats, self.feature_dim)
        return _score(f, self.class_means, self.variance)

    def percentile(self, score: float | np.ndarray) -> np.ndarray | float:
        """Percent of validation images scoring at most ``score`` (interpolated quantiles)."""
        q = self.val_quantiles
        # np.interp needs increasing x; plateaus (ties) are fine, it picks the right end.
        p = np.interp(np.asarray(score, dtype=np.float64), q, QUANTILE_LEVELS)
        return float(p) if np.ndim(p) == 0 else p


@dataclass
class TypicalityResult:
    """One image's typicality for one run."""

    score: float
    percentile: float  # among the run's validation images, 0..100
    outside: bool  # score > cut
    cut: float
    message: str


# ---- the score -------------------------------------------------------------------------------


def _as_features(feats, dim: int | None = None) -> np.ndarray:
    f = feats.detach().double().cpu().numpy() if torch.is_tensor(feats) else np.asarray(feats)
    f = np.asarray(f, dtype=np.float64)
    if f.ndim == 1:
        f = f[None]
    if f.ndim != 2 or (dim is not None and f.shape[1] != dim):
        want = f"(N, {dim})" if dim is not None else "(N, D)"
        raise TypicalityError(f"features must be {want}, got shape {f.shape}")
    if not np.isfinite(f).all():
        raise TypicalityError("features contain NaN or infinity")
    return f


def _score(f: np.ndarray, means: np.ndarray, variance: np.ndarray) -> np.ndarray:
    # (N, 1, D) - (1, C, D) -> (N, C) mean squared z-score -> nearest class, RMS
    d2 = (((f[:, None, :] - means[None]) ** 2) / variance).mean(axis=2)
    return np.sqrt(d2.min(axis=1))


def fit_typicality(
    train_feats: np.ndarray | Tensor,
    train_labels: np.ndarray | Tensor,
    val_feats: np.ndarray | Tensor,
    *,
    classes: Sequence[str] | None = None,
) -> Typicality:
    """Fit the reference: class means and pooled diagonal variance on train, cut on val.

    train_feats (N, D), train_labels (N,) ints, val_feats (M, D). Classes without training
    images are left out of the means. Raises :class:`TypicalityError` on empty splits.
    """
    f = _as_features(train_feats)
    y = np.asarray(train_labels.cpu() if torch.is_tensor(train_labels) else train_labels)
    y = y.astype(np.int64).reshape(-1)
    if len(f) == 0 or len(f) != len(y):
        raise TypicalityError(f"{len(f)} training features for {len(y)} labels")
    v = _as_features(val_feats, f.shape[1])
    if len(v) == 0:
        raise TypicalityError("no validation features: the cut needs a validation split")
    present = np.unique(y)
    means = np.stack([f[y == c].mean(axis=0) for c in present])  # (C', D)
    resid = f - means[np.searchsorted(present, y)]
    variance = (resid**2).sum(axis=0) / max(1, len(f) - len(present))
    variance = np.maximum(variance, _EPS * max(float(variance.mean()), 1e-12))
    val_scores = _score(v, means, variance)
    quantiles = np.percentile(val_scores, QUANTILE_LEVELS)
    return Typicality(
        class_means=means,
        variance=variance,
        val_quantiles=quantiles,
        cut=float(np.percentile(val_scores, CUT_PERCENTILE)),
        n_train=len(f),
        n_val=len(v),
        classes=None if classes is None else [str(c) for c in classes],
    )


# ---- features from a model -------------------------------------------------------------------


def features(model: nn.Module, x: Tensor, *, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """GAP(Z) (N, D) float64 of normalised inputs x (N, 3, S, S), float32 eval-mode forward."""
    from .diagnostics._utils import eval_mode, float32_compute, model_device

    device = model_device(model)
    out = []
    with eval_mode(model), torch.no_grad(), float32_compute(device):
        for s in range(0, len(x), batch_size):
            xb = x[s : s + batch_size].to(device=device, dtype=torch.float32)
            z = model.forward_features(xb)  # (B, D, h, w)
            out.append(z.float().mean(dim=(2, 3)).double().cpu().numpy())
    dim = int(getattr(model, "feature_channels", 0) or 0)
    return np.concatenate(out) if out else np.zeros((0, dim))


def _split_features(model: nn.Module, images, mean, std) -> np.ndarray:
    """GAP(Z) of a uint8 ImageSet, normalised in batches (no augmentation)."""
    from .data import normalize

    out = []
    for s in range(0, len(images), BATCH_SIZE):
        x = normalize(images.images[s : s + BATCH_SIZE], mean, std)
        out.append(features(model, x))
    return np.concatenate(out) if out else np.zeros((0, 0))


def compute_typicality(model: nn.Module, bundle, classes: Sequence[str] | None = None):
    """Fit a run's reference from its dataset bundle (train: means/variance, val: cut)."""
    train = _split_features(model, bundle.train, bundle.mean, bundle.std)
    val = _split_features(model, bundle.val, bundle.mean, bundle.std)
    return fit_typicality(train, bundle.train.labels, val, classes=classes or bundle.classes)


# ---- files -----------------------------------------------------------------------------------


def save_typicality(run_dir: str | os.PathLike, t: Typicality) -> Path:
    """Write ``typicality.safetensors`` + ``typicality.json`` into run_dir; returns the JSON."""
    from safetensors.numpy import save_file

    root = Path(run_dir)
    tensors = {
        "class_means": t.class_means.astype(np.float32),
        "variance": t.variance.astype(np.float32),
        "val_quantiles": t.val_quantiles.astype(np.float32),
    }
    save_file(tensors, str(root / TENSOR_FILE))
    info = {
        "method": t.method,
        "version": t.version,
        "cut_percentile": t.cut_percentile,
        "cut": t.cut,
        "n_train": t.n_train,
        "n_val": t.n_val,
        "feature_dim": t.feature_dim,
        "classes": t.classes,
        "files": {"tensors": TENSOR_FILE},
    }
    path = root / JSON_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    tmp.replace(path)
    return path


def load_typicality(run_dir: str | os.PathLike) -> Typicality:
    """Read a run folder's typicality files; :class:`TypicalityError` (one line) if unusable."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    root = Path(run_dir)
    jpath, tpath = root / JSON_FILE, root / TENSOR_FILE
    if not jpath.is_file() or not tpath.is_file():
        raise TypicalityError(
            f"'{root}' has no typicality reference ({JSON_FILE} + {TENSOR_FILE}); "
            f"create it with: python -m csba.typicality {root}"
        )
    try:
        info = json.loads(jpath.read_text())
        if not isinstance(info, dict):
            raise ValueError("not a JSON object")
        tensors = load_file(str(tpath))
    except (ValueError, OSError, SafetensorError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TypicalityError(f"'{root}': unreadable typicality file ({first})") from None
    if info.get("method") != METHOD or info.get("version") != VERSION:
        raise TypicalityError(
            f"'{jpath}': method {info.get('method')!r} version {info.get('version')!r}; "
            f"this code reads {METHOD!r} version {VERSION} (recreate it with --force)"
        )
    try:
        means = np.asarray(tensors["class_means"], dtype=np.float64)
        variance = np.asarray(tensors["variance"], dtype=np.float64)
        quantiles = np.asarray(tensors["val_quantiles"], dtype=np.float64)
        t = Typicality(
            class_means=means,
            variance=variance,
            val_quantiles=quantiles,
            cut=float(info["cut"]),
            n_train=int(info["n_train"]),
            n_val=int(info["n_val"]),
            classes=info.get("classes"),
            cut_percentile=float(info["cut_percentile"]),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise TypicalityError(f"'{root}': typicality file lacks {e}") from None
    ok = (
        means.ndim == 2
        and variance.shape == (means.shape[1],)
        and quantiles.shape == QUANTILE_LEVELS.shape
        and int(info.get("feature_dim", -1)) == means.shape[1]
        and np.isfinite(means).all()
        and np.isfinite(quantiles).all()
        and (variance > 0).all()
        and np.isfinite(t.cut)
    )
    if not ok:
        raise TypicalityError(f"'{root}': typicality file has inconsistent shapes or values")
    return t


def ensure_typicality(
    run_dir: str | os.PathLike,
    load_run_and_data: Callable | None = None,
    *,
    data_root: str | None = None,
    device: str | torch.device | None = None,
    force: bool = False,
    run=None,
    bundle=None,
) -> Path:
    """Make sure run_dir has a readable typicality reference; compute and save it if not.

    ``run`` / ``bundle`` (a loaded :class:`csba.store.Run` and its dataset) skip the loading;
    otherwise ``load_run_and_data`` (default: the CLI's) rebuilds them from run.json.
    ``force`` recomputes even when a readable file exists. Returns the JSON file's path.
    """
    root = Path(run_dir)
    if not force:
        try:
            load_typicality(root)
            return root / JSON_FILE
        except TypicalityError:
            pass
    if run is None or bundle is None:
        if load_run_and_data is None:
            from .runs import load_run_and_data
        run, bundle = load_run_and_data(str(root), data_root)
    model = run.model
    if device is not None:
        model = model.to(device)
    t = compute_typicality(model, bundle, classes=run.classes)
    return save_typicality(root, t)


# ---- one image -------------------------------------------------------------------------------


def score_image(run, x, *, typicality: Typicality | None = None) -> TypicalityResult:
    """Typicality of one image for a run (a :class:`csba.store.Run`).

    x: a normalised float tensor (1, 3, S, S) / (3, S, S) as the run's model takes it, or a PIL
    image (prepared like the run's dataset). ``typicality`` defaults to the run folder's file
    (:class:`TypicalityError` if it is missing or corrupt).
    """
    t = typicality if typicality is not None else load_typicality(run.path)
    if not torch.is_tensor(x):
        from .attributions import prepare_image

        x = prepare_image(x, run.meta["dataset"]).x
    if not x.is_floating_point():
        raise TypicalityError("x must be a float tensor (1, 3, S, S), normalised like the run")
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[0] != 1:
        raise TypicalityError(f"expected one image (1, 3, S, S), got shape {tuple(x.shape)}")
    s = float(t.score(features(run.model, x))[0])
    p = float(t.percentile(s))
    outside = s > t.cut
    name = Path(run.path).name
    if outside:
        msg = (
            f"This image lies outside what run {name} was trained on (score {s:.2f} beyond the "
            f"{t.cut_percentile:g}th percentile of its validation images, {t.cut:.2f}); "
            "its prediction is not meaningful."
        )
    else:
        msg = (
            f"typicality: percentile {p:.0f} of validation images (score {s:.2f}, cut {t.cut:.2f})"
        )
    return TypicalityResult(score=s, percentile=p, outside=outside, cut=t.cut, message=msg)


# ---- command line ----------------------------------------------------------------------------


def measure(run_dir: str | os.PathLike, data_root: str | None = None) -> dict:
    """A run's reference checked: cut, fraction of its test split flagged, the scores of the
    two scikit-learn sample photographs (``china.jpg``, ``flower.jpg``)."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    from .runs import load_run_and_data

    run, bundle = load_run_and_data(str(run_dir), data_root)
    t = load_typicality(run.path)
    test = t.score(_split_features(run.model, bundle.test, bundle.mean, bundle.std))
    photos = {
        n: score_image(run, Image.fromarray(load_sample_image(n)), typicality=t).score
        for n in ("china.jpg", "flower.jpg")
    }
    return {
        "run": Path(run.path).name,
        "cut": t.cut,
        "test_flagged": float(np.mean(test > t.cut)),
        "n_test": len(test),
        "test_median": float(np.median(test)),
        "photos": photos,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m csba.typicality RUN_DIR ... [--force] [--data-root D]``: backfill runs."""
    ap = argparse.ArgumentParser(prog="python -m csba.typicality", description=main.__doc__)
    ap.add_argument("run_dirs", nargs="+")
    ap.add_argument("--force", action="store_true", help="recompute existing files")
    ap.add_argument("--data-root", default=None)
    ap.add_argument(
        "--measure",
        action="store_true",
        help="print a markdown table: cut, test images flagged, the two sample photos' scores",
    )
    args = ap.parse_args(argv)
    failed = 0
    if args.measure:
        print("| run | cut (val p99) | test median | test flagged | china.jpg | flower.jpg |")
        print("|---|---|---|---|---|---|")
        for d in args.run_dirs:
            m = measure(d, args.data_root)
            ph = m["photos"]
            print(
                f"| {m['run']} | {m['cut']:.2f} | {m['test_median']:.2f} | "
                f"{100 * m['test_flagged']:.1f}% of {m['n_test']} | "
                f"{ph['china.jpg']:.2f} | {ph['flower.jpg']:.2f} |",
                flush=True,
            )
        return 0
    for d in args.run_dirs:
        try:
            path = ensure_typicality(d, data_root=args.data_root, force=args.force)
            info = json.loads(path.read_text())
            print(f"{d}: cut {info['cut']:.3f} (n_train {info['n_train']}, n_val {info['n_val']})")
        except Exception as e:  # one run's failure must not stop the others
            print(f"{d}: {type(e).__name__}: {e}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
