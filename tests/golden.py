"""Golden fixtures of the ten variants, written from the code before heads and methods were split.

For each registered variant on trifire at C = 4: the state-dict keys and shapes, a SHA-256 of the
seed-0 initial weights, the run.json ``method`` record and the loss history of a short run on a
tiny generated image folder (fp32, 1 thread), with epochs, patience, DRW patience and cRT epochs
set so that LDAM-DRW's deferred re-weighting and cRT's second stage both start. The refactor of
variants into head x method presets must reproduce them (tests/test_golden_variants.py):
keys, shapes, weight hash and method record exactly, losses to 1e-4 relative.

    python tests/golden.py            # rewrite tests/golden/variants.json (only before a refactor)
    python tests/golden.py --losses   # losses-<CPU class>.json: this CPU class's short runs
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run as a script from anywhere: the repository first
GOLDEN = HERE / "golden" / "variants.json"
NUM_CLASSES = 4
SIZE = 16  # px: tiny images, a few seconds per run
# Short runs in which LDAM-DRW's re-weighting and cRT's stage 2 both start (asserted).
RUN = {"epochs": 6, "patience": 2, "drw_patience": 1, "crt_epochs": 2, "batch_size": 16}


def weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 over the state dict in key order: each key, dtype, shape and raw bytes."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def structure(variant: str) -> dict:
    """Keys and shapes of the state dict, and the hash of the seed-0 initial weights."""
    from csba.models import create_model

    torch.manual_seed(0)
    model = create_model(variant, NUM_CLASSES)
    return {
        "shapes": {k: list(v.shape) for k, v in model.state_dict().items()},
        "init_sha256": weights_sha256(model),
    }


def short_run(variant: str, data_root: Path) -> dict:
    """The method record and per-epoch losses of a short fp32 run on the tiny folder."""
    from csba.train import TrainConfig, train

    cfg = TrainConfig(
        dataset="imagefolder",
        data_root=str(data_root),
        variant=variant,
        image_size=SIZE,
        precision="fp32",
        device="cpu",
        **RUN,
    )
    meta = train(cfg, save=False)
    hist = meta["history"]
    return {
        "method": meta["method"],
        "train_loss": [h["train_loss"] for h in hist],
        "val_loss": [h["val_loss"] for h in hist],
        "epochs_run": meta["epochs_run"],
        "best_epoch": meta["best_epoch"],
    }


def tiny_folder(root: Path) -> Path:
    """Four imbalanced classes of 16 px PNGs (tests/conftest.make_image_folder, seed 0)."""
    sys.path.insert(0, str(HERE))
    from conftest import make_image_folder

    return make_image_folder(root / "data", per_class=(40, 24, 12, 8), size=SIZE, seed=0)


def golden_of(variant: str, data_root: Path) -> dict:
    return {**structure(variant), **short_run(variant, data_root)}


def check_phases(entry: dict, variant: str) -> None:
    """The runs must reach the phases they pin down."""
    if variant == "ldam_drw":
        assert entry["method"]["drw_epoch"] is not None, "LDAM-DRW never re-weighted"
    if variant == "crt":
        assert entry["method"]["stage2_start"] is not None, "cRT never reached stage 2"


LOSS_KEYS = ("train_loss", "val_loss", "epochs_run", "best_epoch")
# The CPU class (ATen's dispatch level) of the machine that wrote variants.json: fp32 sums in
# another order (AVX-512 kernels) move the short runs' losses by up to 0.5% within 6 epochs.
WRITTEN_ON = "AVX2"


def cpu_class() -> str:
    """ATen's CPU capability: 'AVX2', 'AVX512', 'DEFAULT', ..."""
    return torch.backends.cpu.get_cpu_capability()


def losses_file(cap: str) -> Path:
    """The short runs' losses on CPUs of class ``cap`` (variants.json holds WRITTEN_ON's)."""
    return HERE / "golden" / f"losses-{cap}.json"


def write_losses() -> None:
    """``--losses``: this CPU class's losses of the current code, for the test to compare with
    on such machines (the structure, hash and method records stay variants.json's)."""
    from csba.models import list_models

    torch.set_num_threads(1)
    out = {"cpu_capability": cpu_class(), "variants": {}}
    with tempfile.TemporaryDirectory() as tmp:
        data = tiny_folder(Path(tmp))
        for v in list_models():
            run = short_run(v, data)
            check_phases(run, v)
            out["variants"][v] = {k: run[k] for k in LOSS_KEYS}
    losses_file(cpu_class()).write_text(json.dumps(out, indent=1) + "\n")


def main() -> None:
    from csba.models import list_models

    if sys.argv[1:] == ["--losses"]:
        write_losses()
        return
    torch.set_num_threads(1)
    out = {"num_classes": NUM_CLASSES, "image_size": SIZE, "run": RUN, "variants": {}}
    with tempfile.TemporaryDirectory() as tmp:
        data = tiny_folder(Path(tmp))
        for v in list_models():
            out["variants"][v] = golden_of(v, data)
            check_phases(out["variants"][v], v)
            print(v, out["variants"][v]["train_loss"])
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
