"""What the per-example scores find: moved labels among the top-ranked training images.

    python benchmarks/bench_label_errors.py [--out runs/label-errors] [--seeds 0 1 2]
                                            [--rate 0.05] [--epochs 40] [--patience 10]

Exports scikit-learn's digits (1,797 8x8 images, 10 classes) as an image folder, then for each
flip seed trains trifire (baseline preset) at 32 px on it with ``--label-noise RATE
--label-noise-seed S`` (that share of the training split's labels moved to another class after
the split; validation and test stay clean), diagnoses it on the whole training split with the
per-example scores, and measures the share of moved images among the top 5% and top 10% of the
training images ranked by each score:

  self-influence    |g_x|^2, highest first;
  own alignment     cosine with the own class's mean gradient (leave-one-out), lowest first;
  low confidence    p(label | x), lowest first;
  random            a seeded shuffle (expected: RATE).

Runs already complete under --out are reused. Prints one markdown table (mean and per seed),
then per seed how the moved images differ: gradient norm, share of their class's summed gradient
norm, mean own-class alignment.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

RANKINGS = ("self-influence", "own alignment", "low confidence", "random")


def export_digits(root: Path) -> Path:
    """scikit-learn's digits as PNGs in one folder per class (once)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    folder = root / "digits"
    if (folder / "9").is_dir():
        return folder
    d = load_digits()
    for i, (img, y) in enumerate(zip(d.images, d.target, strict=True)):
        (folder / str(y)).mkdir(parents=True, exist_ok=True)
        px = np.clip(img * (255 / 16), 0, 255).astype(np.uint8)  # 0..16 -> 0..255
        Image.fromarray(px, mode="L").save(folder / str(y) / f"{i:04d}.png")
    return folder


def shares(scores, flipped: np.ndarray, seed: int) -> dict[str, tuple[float, float]]:
    """Share of moved images in the top 5% and 10% of each ranking."""
    n = len(scores.labels)
    moved = np.zeros(n, bool)
    moved[flipped] = True
    order = {
        "self-influence": np.argsort(-scores.self_influence, kind="stable"),
        "own alignment": np.argsort(np.nan_to_num(scores.own_alignment, nan=2.0), kind="stable"),
        "low confidence": np.argsort(scores.confidence, kind="stable"),
        "random": np.random.default_rng(seed).permutation(n),
    }
    out: dict = {"_moved": moved_profile(scores, moved)}
    for name, idx in order.items():
        k5, k10 = max(1, round(0.05 * n)), max(1, round(0.10 * n))
        out[name] = (float(moved[idx[:k5]].mean()), float(moved[idx[:k10]].mean()))
    return out


def moved_profile(scores, moved: np.ndarray) -> dict[str, float]:
    """Why a ranking finds moved images or not: their gradient norm against the clean images'
    (median ratio), their share of each class's summed gradient norm (mean over classes; their
    share of the images is RATE) and the mean own-class alignment of both."""
    g = np.sqrt(scores.self_influence)  # |g_x|
    classes = np.unique(scores.labels)
    share = [g[(scores.labels == c) & moved].sum() / g[scores.labels == c].sum() for c in classes]
    own = scores.own_alignment
    return {
        "norm ratio": float(np.median(g[moved]) / np.median(g[~moved])),
        "norm share": float(np.mean(share)),
        "own moved": float(np.nanmean(own[moved])),
        "own clean": float(np.nanmean(own[~moved])),
    }


def one_seed(folder: Path, out: Path, seed: int, args) -> dict:
    from csba.diagnostics.examples import load_scores
    from csba.diagnostics.run import diagnose_run
    from csba.store import read_run_json
    from csba.train import TrainConfig, config_run_dir, train

    cfg = TrainConfig(
        dataset="imagefolder",
        data_root=str(folder),
        variant="baseline",
        image_size=32,
        epochs=args.epochs,
        patience=args.patience,
        label_noise=args.rate,
        resume=True,  # an interrupted run continues from its last finished epoch
        label_noise_seed=seed,
        out=str(out),
        seed=0,
    )
    run_dir = config_run_dir(cfg)
    done = (run_dir / "run.json").is_file() and read_run_json(run_dir)["status"] == "completed"
    if not done:
        train(cfg)
    if not done or load_scores(run_dir, "train") is None:  # scores of this version
        diagnose_run(str(run_dir), per_class=None)
    meta = read_run_json(run_dir)
    flipped = np.asarray(meta["dataset"]["label_noise"]["flipped"])
    return shares(load_scores(run_dir, "train"), flipped, seed) | {
        "_test_accuracy": meta["metrics"]["test"]["accuracy"]
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/label-errors")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rate", type=float, default=0.05)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--patience", type=int, default=10)
    args = ap.parse_args(argv)
    out = Path(args.out)
    folder = export_digits(out)
    results = {s: one_seed(folder, out / "runs", s, args) for s in args.seeds}
    print(f"moved labels: {args.rate:.0%} of the training split; seeds {args.seeds}")
    print("| ranking | top 5% | top 10% | per seed (5% / 10%) |")
    print("|---|---:|---:|---|")
    for name in RANKINGS:
        a = np.array([results[s][name] for s in args.seeds])
        per = ", ".join(f"{x:.2f} / {y:.2f}" for x, y in a)
        print(f"| {name} | {a[:, 0].mean():.2f} | {a[:, 1].mean():.2f} | {per} |")
    for seed in args.seeds:
        m = results[seed]["_moved"]
        print(
            f"seed {seed}: moved images' |g| {m['norm ratio']:.0f}x the clean median, "
            f"{m['norm share']:.2f} of their class's summed |g|; own-class alignment "
            f"{m['own moved']:+.3f} moved vs {m['own clean']:+.3f} clean (mean)"
        )
    acc = ", ".join(f"{results[s]['_test_accuracy']:.3f}" for s in args.seeds)
    print(f"test accuracy (clean test labels) per seed: {acc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
