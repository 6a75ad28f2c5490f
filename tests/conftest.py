"""Shared fixtures: a private dataset cache, a tiny image-folder dataset and tiny trained runs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Every test session decodes into its own cache, never the user's."""
    old = os.environ.get("CSBA_CACHE")
    os.environ["CSBA_CACHE"] = str(tmp_path_factory.mktemp("csba-cache"))
    yield
    if old is None:
        os.environ.pop("CSBA_CACHE", None)
    else:
        os.environ["CSBA_CACHE"] = old


def make_image_folder(root: Path, per_class=(30, 20, 10), size: int = 32, seed: int = 0) -> Path:
    """Class folders of PNGs with a learnable class-dependent pattern (imbalanced counts)."""
    rng = np.random.default_rng(seed)
    names = ["alpha", "beta", "gamma", "delta"][: len(per_class)]
    for c, (name, n) in enumerate(zip(names, per_class, strict=True)):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
            band = slice(c * size // len(per_class), (c + 1) * size // len(per_class))
            img[band, :, :] += 150  # horizontal band position encodes the class
            Image.fromarray(img).save(d / f"{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    root = make_image_folder(tmp_path_factory.mktemp("tiny") / "data")
    (root / "alpha" / "notes.txt").write_text("not an image")
    (root / "beta" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return root


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory, tiny_folder) -> dict[str, Path]:
    """One-epoch runs of the paper's five variants on the tiny dataset (32 px), keyed by
    variant (the long-tail methods and other backbones: tiny_extra_runs)."""
    from csba.models import PAPER_VARIANTS
    from csba.train import TrainConfig, train

    out = tmp_path_factory.mktemp("runs")
    runs = {}
    for variant in PAPER_VARIANTS:
        meta = train(
            TrainConfig(
                dataset="imagefolder",
                data_root=str(tiny_folder),
                variant=variant,
                image_size=32,
                epochs=1,
                batch_size=16,
                out=str(out),
            )
        )
        runs[variant] = Path(meta["run_dir"])
    return runs


@pytest.fixture(scope="session")
def tiny_extra_runs(tmp_path_factory, tiny_folder) -> dict[str, Path]:
    """One-epoch runs of the long-tail methods (trifire) and of baseline and csba on resnet18,
    seed 0, on the tiny dataset (32 px), keyed by folder name; each diagnosed."""
    from csba.diagnostics.run import diagnose_run
    from csba.models import PAPER_VARIANTS, list_models
    from csba.train import TrainConfig, train

    out = tmp_path_factory.mktemp("extra")
    todo = [(v, "trifire") for v in list_models() if v not in PAPER_VARIANTS]
    todo += [("baseline", "trifire"), ("baseline", "resnet18"), ("csba", "resnet18")]
    runs = {}
    for variant, backbone in todo:
        meta = train(
            TrainConfig(
                dataset="imagefolder",
                data_root=str(tiny_folder),
                variant=variant,
                backbone=backbone,
                image_size=32,
                epochs=1,
                batch_size=16,
                crt_epochs=1,
                out=str(out),
            )
        )
        diagnose_run(meta["run_dir"], per_class=4, device="cpu")
        runs[Path(meta["run_dir"]).name] = Path(meta["run_dir"])
    return runs


def settle_attributions(at, timeout_s: float = 120.0) -> None:
    """Rerun an AppTest on the Attributions page until no run's computation is pending (its
    first answer waits only for the first run's maps; the others come on later reruns)."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        pending = [i.value for i in at.info if "computing..." in i.value or "queued" in i.value]
        pending += [c.value for c in at.caption if "computations for this image done" in c.value]
        if not pending or time.monotonic() > deadline:
            return
        time.sleep(0.3)
        at.run()
