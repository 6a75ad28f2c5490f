"""The run's configuration: :class:`TrainConfig`, every field with its default and its reason.

A run folder stores its whole config (run.json ``config``) and rebuilds itself from it. Fields made
with ``_opt`` are command-line options too (``csba.options`` turns them into ``--flags`` for
``train`` and ``protocol`` and widgets' help on the Training page). Pure: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

__all__ = [
    "CRT_EPOCHS",
    "CRT_LR",
    "DEVICES",
    "DRW_PATIENCE",
    "KEEP_RULES",
    "LR_SCHEDULES",
    "PRECISIONS",
    "WEIGHT_DTYPE_NAMES",
    "TrainConfig",
]

CRT_EPOCHS = 10  # cRT stage 2 length in epochs (Kang et al. re-train for 10; pinned)
CRT_LR = 1e-3  # cRT stage 2 Adam learning rate, constant (pinned)
DRW_PATIENCE = 10  # LDAM-DRW: epochs without validation gain that start the re-weighting
WEIGHT_DTYPE_NAMES = ("float16", "float32")  # TrainConfig.weights_dtype (csba.train: dtypes)
LR_SCHEDULES = ("step", "cosine")  # TrainConfig.lr_schedule
KEEP_RULES = ("best", "last")  # TrainConfig.keep
DEVICES = ("auto", "cpu", "cuda")  # TrainConfig.device
PRECISIONS = ("auto", "bf16", "fp32")  # TrainConfig.precision


def _opt(default, help: str, *, choices=None, metavar: str | None = None):
    """A TrainConfig field that is also a command-line option (csba.options): its help text and
    choices live here, once, for ``train``, ``protocol`` and the Training page. ``{names}`` in
    the help is filled with the registry's names (datasets, variants)."""
    meta = {"help": help, "choices": choices, "metavar": metavar}
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Everything a run needs; stored whole in run.json so the run rebuilds itself.

    Fields made with ``_opt`` are command-line options (``--image-size`` for ``image_size``);
    the others are fixed by the protocol and only reachable from Python.
    """

    dataset: str = _opt(
        "elpv",  # elpv | elpv8 | imagefolder | cifar10-lt
        "one of {names} (default %(default)s: the ELPV solar "
        "cells shipped by the elpv-dataset package)",
        metavar="NAME",
    )
    variant: str = _opt(
        "csba",  # a preset (csba.list_models()) or HEAD+METHOD (csba.models.variant_name)
        "a preset: {names} (default %(default)s), or HEAD+METHOD such as csba+ldam_drw "
        "(--head and --method replace its parts; python -m csba parts lists them)",
        metavar="NAME",
    )
    backbone: str = _opt(
        "trifire",  # csba.backbones.list_backbones(); part of the run folder's name otherwise
        "feature extractor under the head: one of {names} (default %(default)s: the paper's "
        "tri-path Fire network; the others are torchvision's builders), or timm:NAME for any "
        "timm model with features_only",
        metavar="NAME",
    )
    pretrained: str | None = _opt(
        None,  # torchvision and timm backbones only
        "start a torchvision or timm backbone from 'imagenet' (the library's download) or a local "
        ".safetensors state dict; pretrained runs normalise with ImageNet statistics (default: "
        "from scratch)",
        metavar="imagenet|PATH",
    )
    seed: int = _opt(
        0, "seed for initialisation, batch order and augmentation (default %(default)s)"
    )
    image_size: int = _opt(128, "square input size in pixels (default %(default)s)")
    data_root: str | None = _opt(
        None,  # imagefolder / cifar10-lt source folder
        "source folder for imagefolder (class folders) or cifar10-lt (CIFAR-10 batches); not "
        "needed for elpv/elpv8",
    )
    split_seed: int = _opt(
        0,  # fixed across training seeds so runs share one test set
        "seed of the stratified train/val/test split (default %(default)s)",
    )
    epochs: int = _opt(300, "maximum epochs; early stopping may end sooner (default %(default)s)")
    batch_size: int = _opt(32, "images per step (default %(default)s, pinned)")
    # Adam; 1e-3 was unstable on ELPV at 128 px (docs/design.md §2)
    lr: float = _opt(1e-4, "Adam learning rate (default %(default)g)")
    weight_decay: float = 0.0
    lr_step: int = 30  # StepLR step, epochs (pinned)
    lr_gamma: float = 0.5  # StepLR factor (pinned)
    patience: int = _opt(
        20,  # early stopping on validation macro-F1, epochs (pinned)
        "early-stopping patience in epochs (default %(default)s)",
    )
    # Learning-rate schedule: "step" is StepLR(lr_step, lr_gamma) (pinned); "cosine" anneals
    # from lr to 0 over `epochs` (CosineAnnealingLR), so the last epochs average out step noise.
    lr_schedule: str = _opt(
        "step",
        "step: StepLR 30 epochs x0.5 (pinned); cosine: anneal to 0 over --epochs "
        "(default %(default)s)",
        choices=LR_SCHEDULES,
    )
    # Which weights are kept: "best" = best validation macro-F1 with early stopping (pinned);
    # "last" = the final epoch's, no early stopping (every run trains `epochs`). With 296
    # validation images the best-of-N pick is partly a lucky draw (docs/experiments.md).
    keep: str = _opt(
        "best",
        "best: the best validation macro-F1 with early stopping (pinned); last: the final "
        "epoch's weights, no early stopping (default %(default)s)",
        choices=KEEP_RULES,
    )
    # Exponential moving average of the weights (and BatchNorm buffers), updated every step;
    # validation, early stopping and the kept weights use the average. 0 = off (the pinned
    # protocol). 0.998 averages over about 500 steps, ~10 epochs of ELPV at batch 32.
    ema_decay: float = _opt(
        0.0,
        "moving average of the weights for validation and the kept weights, per step, in "
        "[0, 1) (0: off, the pinned protocol; 0.998: about 10 ELPV epochs)",
    )
    focal_gamma: float = 2.0  # focal variant only
    la_tau: float = _opt(
        1.0,  # logit_adjust only; 1 = balanced softmax
        "logit_adjust only: tau of the log-prior added to the logits in training (default "
        "%(default)s: balanced softmax)",
    )
    drw_patience: int = DRW_PATIENCE  # ldam_drw: re-weighting starts after this plateau, epochs
    crt_epochs: int = CRT_EPOCHS  # crt: classifier re-training epochs (stage 2, pinned)
    crt_lr: float = CRT_LR  # crt: stage-2 Adam learning rate, constant (pinned)
    augment: bool = True  # flips, plus 90-degree rotations for EL cells
    # Label-error experiments (csba.noise): a share of the training labels moved to another
    # class after the split; validation and test stay clean. 0 = off (the pinned protocol).
    label_noise: float = _opt(
        0.0,
        "share of the training split's labels moved to another class after the split, in "
        "[0, 1) (default %(default)s: off); recorded in run.json with the moved images",
    )
    label_noise_seed: int = _opt(0, "seed of the moved labels (default %(default)s)")
    device: str = _opt(
        "auto", "auto picks CUDA when present (default %(default)s)", choices=DEVICES
    )
    precision: str = _opt(
        "auto",  # auto (bf16 where fast) | bf16 | fp32
        "auto: bfloat16 autocast + channels_last where the hardware supports it, else float32 "
        "(default %(default)s)",
        choices=PRECISIONS,
    )
    channels_last: bool | None = None  # None: on with bf16
    conflict_every: int = _opt(
        0, "record the gradient conflict matrix every N epochs (0: off; default %(default)s)"
    )
    conflict_per_class: int = 16  # images per class in the fixed diagnostic subset
    deterministic: bool = True  # deterministic kernels; off allows cudnn.benchmark
    # CUDA only: capture the training step once as a CUDA graph and replay it (one launch per
    # step instead of hundreds; this model's GPU step is launch-bound). Falls back to eager
    # steps if the capture fails; run.json runtime.cuda_graph records which ran.
    cuda_graph: bool = _opt(
        True,
        "on CUDA, capture the training step as a CUDA graph and replay it (falls back to eager "
        "steps if capture fails; default: on)",
    )
    eval_batch_size: int = 128
    # Storage of the kept weights in model.safetensors: float16 halves the files (15 runs of all
    # five variants at fp32 are 136 MB, so two image sizes cannot share a 150 MB budget). The
    # kept weights are rounded before the stored val/test metrics are computed, so the metrics
    # are those of the stored weights; float32 stores them unrounded.
    weights_dtype: str = _opt(
        "float16",
        "storage of the kept weights (default %(default)s: half the size; the stored metrics "
        "are those of the rounded weights)",
        choices=WEIGHT_DTYPE_NAMES,
    )
    out: str = _opt(
        "checkpoints",
        "root of run folders: OUT/<dataset>/<variant>-s<seed> (default %(default)s)",
    )
    run_dir: str | None = _opt(None, "exact run folder (overrides --out/dataset/variant/seed)")
    resume: bool = _opt(
        False,
        "continue an interrupted run from its last finished epoch (the state saved in "
        "<run folder>/resume at every epoch); the result equals an uninterrupted run's at the "
        "same thread count (default: off, train from scratch)",
    )

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
