"""Training (docs/design.md §2): one pure function, :func:`train`, driven by a
:class:`TrainConfig` (csba.config): it checks the config, builds the dataset and the network
(head x method on a backbone, csba.models), runs the epoch loop (csba.loop.Loop, which calls
the method's hooks) and stores the run.

Data stay uint8 tensors (on the device when it is a GPU); each batch is augmented, normalised and
cast on the fly. bfloat16 autocast + channels_last where supported (``precision="auto"``), float32
otherwise. Early stopping on validation macro-F1 keeps the best weights in memory; Ctrl-C or a
cancel request stops after the current batch and still saves the best weights so far.
"""

from __future__ import annotations

import copy
import datetime as _dt
import os
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .backbones import BackboneError, load_pretrained
from .config import KEEP_RULES, LR_SCHEDULES, WEIGHT_DTYPE_NAMES, TrainConfig
from .data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DatasetBundle,
    expected_classes,
    load_dataset,
    with_normalisation,
)
from .evaluate import evaluate_split, prediction_record
from .loop import Loop, TrainingError, TrainingStopped, config_key
from .methods import method_record
from .models import check_variant, count_parameters, create_model, model_info
from .resume import LoopState, ResumeError, resume_dir
from .store import config_run_dir, save_run

__all__ = [
    "TrainConfig",
    "TrainingError",
    "TrainingStopped",
    "resolve_device",
    "resolve_precision",
    "train",
]


# Storage dtypes of the kept weights (TrainConfig.weights_dtype names them).
WEIGHT_DTYPES = {"float16": torch.float16, "float32": torch.float32}
assert tuple(WEIGHT_DTYPES) == WEIGHT_DTYPE_NAMES


def resolve_device(device: str) -> torch.device:
    """auto -> cuda when available, else cpu; an explicit cuda without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA GPU is available")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}; choose auto, cpu or cuda")
    return torch.device(device)


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_bf16", "amx_bf16", "avx512bw"))


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto -> bf16 on CUDA and on CPUs with AVX-512/AMX, else fp32."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"unknown precision {precision!r}; choose auto, bf16 or fp32")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if _cpu_has_bf16() else "fp32"


@torch.no_grad()
def round_weights(model: nn.Module, dtype: torch.dtype) -> torch.dtype:
    """Round a model's floating-point parameters and buffers in place to ``dtype`` (kept in
    float32), as storing them in ``dtype`` would; returns the dtype to store. A value beyond
    float16's range (|x| > 65504) keeps the whole model in float32 rather than storing an inf.
    """
    if dtype == torch.float32:
        return dtype
    tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
    limit = torch.finfo(dtype).max
    if any(t.abs().max() > limit for t in tensors if t.numel()):
        return torch.float32
    for t in tensors:
        t.copy_(t.to(dtype))
    return dtype


def seed_everything(seed: int, deterministic: bool) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = True


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _checked(config: TrainConfig, save: bool) -> TrainConfig:
    """A copy of the config, its choices checked (one-line TrainingError each)."""
    cfg = copy.deepcopy(config)
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise TrainingError(f"ema_decay must be in [0, 1), got {cfg.ema_decay}")
    for name, value, allowed in (
        ("lr_schedule", cfg.lr_schedule, LR_SCHEDULES),
        ("keep", cfg.keep, KEEP_RULES),
        ("weights_dtype", cfg.weights_dtype, WEIGHT_DTYPES),
    ):
        if value not in allowed:
            raise TrainingError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    if not 0.0 <= cfg.label_noise < 1.0:
        raise TrainingError(f"label_noise must be in [0, 1), got {cfg.label_noise}")
    if cfg.resume and not save:
        raise TrainingError("resume needs a run folder (save=True)")
    try:  # before any data is loaded
        check_variant(cfg.variant, expected_classes(cfg.dataset, cfg.data_root))
    except ValueError as e:
        raise TrainingError(str(e)) from None
    return cfg


def _resume_state(cfg: TrainConfig, run_dir: Path) -> LoopState | None:
    """The run folder's resume state when ``cfg.resume`` asks for it and one was written with
    the same options; a TrainingError naming the differing options otherwise."""
    try:
        resumed = LoopState.load(run_dir) if cfg.resume else None
    except ResumeError as e:
        raise TrainingError(str(e)) from None
    if resumed is not None and resumed.config != config_key(cfg):
        theirs, ours = resumed.config or {}, config_key(cfg)
        diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        raise TrainingError(
            f"the resume state in '{resume_dir(run_dir)}' was written with other options "
            f"({', '.join(diff)}); use those or delete that folder to start over"
        )
    return resumed


def _build_model(cfg: TrainConfig, num_classes: int, model_kwargs: dict | None, device, cl: bool):
    """``(model on device, model kwargs for run.json, pretrained record)``."""
    model_kwargs = dict(model_kwargs or {})
    if cfg.backbone != "trifire":
        model_kwargs["backbone"] = cfg.backbone  # run.json "model": what rebuilds the model
    try:
        model = create_model(cfg.variant, num_classes, **model_kwargs)
        if hasattr(model.backbone, "check_input"):  # timm: the run's image size must fit
            model.backbone.check_input(cfg.image_size)
        pretrained = load_pretrained(model.backbone, cfg.pretrained) if cfg.pretrained else None
    except (BackboneError, ValueError) as e:
        raise TrainingError(str(e)) from None
    model = model.to(device)
    if cl:
        model = model.to(memory_format=torch.channels_last)
    return model, model_kwargs, pretrained


def _run_loop(loop: Loop, run_dir: Path | None) -> str:
    """Run the epoch loop; returns the run's status (its stop reason: ``loop.stop_reason``).
    Ctrl-C and cancel end it early (the kept weights so far stand); out of GPU memory is a
    TrainingError saying what to lower."""
    loop.t_start = time.perf_counter()  # this session's start: train_seconds adds earlier ones
    loop.emit(
        {
            "type": "start",
            "epochs": loop.cfg.epochs,
            "num_batches": loop.num_batches,
            "device": str(loop.device),
            "precision": loop.precision,
            "resumed_from": loop.start_epoch - 1,
        }
    )
    write = None if run_dir is None else (lambda epoch: loop.save_state(run_dir, epoch))
    status = "completed"
    try:
        loop.run(write)
    except torch.cuda.OutOfMemoryError:
        raise TrainingError(
            f"CUDA ran out of memory at batch size {loop.cfg.batch_size} and "
            f"{loop.cfg.image_size} px; lower --batch-size or --image-size, or train on the CPU "
            "(--device cpu)"
        ) from None
    except KeyboardInterrupt:
        status, loop.stop_reason = "interrupted", "interrupted (Ctrl-C)"
    except TrainingStopped:
        status, loop.stop_reason = "cancelled", "cancelled"
    if loop.best["state"] is None:
        raise TrainingStopped(f"{loop.stop_reason or 'stopped'} before the first epoch finished")
    return status


def train(
    config: TrainConfig,
    *,
    bundle: DatasetBundle | None = None,
    callback: Callable[[dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    model_kwargs: dict | None = None,
    save: bool = True,
    dist=None,
) -> dict:
    """Train one run and store it; returns the run's metadata (what run.json holds).

    ``callback(event)`` receives dicts with ``type`` "start", "batch", "epoch" or "end" so a
    dashboard can follow progress; ``should_stop()`` is polled every batch (cancel). A
    KeyboardInterrupt or cancel ends training early and the best weights so far are kept.
    With ``config.resume`` a run whose folder holds a resume state (written at the end of
    every epoch) continues from its last finished epoch, with the same result as an
    uninterrupted run at the same thread count. ``dist``: a csba.distributed.DistContext
    under torchrun (one run across processes: global batch, rank 0 validates and writes).
    """
    cfg = _checked(config, save)
    device = resolve_device(cfg.device) if dist is None else dist.device
    precision = resolve_precision(cfg.precision, device)
    channels_last = precision == "bf16" if cfg.channels_last is None else cfg.channels_last
    seed_everything(cfg.seed, cfg.deterministic)
    run_dir = config_run_dir(cfg)
    resumed = _resume_state(cfg, run_dir)
    if bundle is None:
        bundle = load_dataset(
            cfg.dataset, cfg.image_size, data_root=cfg.data_root, split_seed=cfg.split_seed
        )
    if cfg.pretrained:  # ImageNet statistics, per RGB channel (grey images are repeated)
        bundle = with_normalisation(bundle, IMAGENET_MEAN, IMAGENET_STD)
    if cfg.label_noise > 0:  # training labels moved after the split (csba.noise)
        from .noise import apply_label_noise

        bundle = apply_label_noise(bundle, cfg.label_noise, cfg.label_noise_seed)
    model, model_kwargs, pretrained = _build_model(
        cfg, bundle.num_classes, model_kwargs, device, channels_last
    )
    loop = Loop(
        cfg,
        model,
        bundle,
        device,
        precision,
        channels_last,
        dist=dist,
        emit=callback,
        should_stop=should_stop,
    )
    if resumed is not None:
        loop.restore(resumed)
    write = save and (dist is None or dist.is_main)  # only rank 0 writes the run folder
    status = _run_loop(loop, run_dir if write else None)
    train_seconds = loop.elapsed + time.perf_counter() - loop.t_start
    if not (dist is None or dist.is_main):
        return {"status": status, "rank": dist.rank, "run_dir": str(run_dir)}
    meta = _finished_run(loop, status, train_seconds, model_kwargs, pretrained)
    if write:
        save_run(run_dir, loop.model, meta, dtype=getattr(torch, meta["weights_dtype"]))
        meta["run_dir"] = str(run_dir)
        if status == "completed":
            import shutil

            shutil.rmtree(resume_dir(run_dir), ignore_errors=True)
    loop.emit(
        {
            "type": "end",
            "status": status,
            "run_dir": meta.get("run_dir"),
            "test_macro_f1": meta["metrics"]["test"]["macro_f1"],
            "test_accuracy": meta["metrics"]["test"]["accuracy"],
        }
    )
    return meta


def _finished_run(loop: Loop, status: str, train_seconds: float, model_kwargs, pretrained) -> dict:
    """The kept weights loaded, rounded to their storage dtype and evaluated in float32 on test
    and validation; returns run.json's content (``loop.model`` is then the stored model)."""
    cfg, b = loop.cfg, loop.bundle
    model = loop.model
    model.load_state_dict(loop.best["state"])
    for p in model.parameters():
        p.requires_grad_(True)
    weights_dtype = round_weights(model, WEIGHT_DTYPES[cfg.weights_dtype])
    model = model.to(memory_format=torch.contiguous_format).eval()
    test_metrics, test_probs = evaluate_split(
        model, b.test, b.classes, b.mean, b.std, device=loop.device
    )
    val_metrics, _ = evaluate_split(model, b.val, b.classes, b.mean, b.std, device=loop.device)
    loop.model = model = model.cpu()
    kept = loop.history[loop.best["epoch"] - 1]
    info = model_info(cfg.variant)
    return {
        "variant": cfg.variant,
        "composition": {
            "head": info["head"],
            "method": info["method"],
            "backbone": cfg.backbone,
            "preset": info["preset"],
        },
        "num_classes": b.num_classes,
        "classes": b.classes,
        "config": asdict(cfg),
        "model": model_kwargs,
        "method": method_record(model.method, loop.phases, loop.counts, cfg, model),
        "backbone": {
            "name": cfg.backbone,
            "feature_channels": model.feature_channels,
            "stages": model.backbone.stage_names(),
            "pretrained": pretrained,
        },
        "dataset": {**b.describe(), "data_root": b.data_root},
        "split_indices": b.split_indices,
        "parameters": count_parameters(model),
        "weights_dtype": str(weights_dtype).removeprefix("torch."),  # as stored
        "status": status,
        "stop_reason": loop.stop_reason or f"reached {cfg.epochs} epochs",
        "best_epoch": loop.best["epoch"],
        "epochs_run": len(loop.history),
        "history": loop.history,
        "generalisation_gap": kept["val_loss"] - kept["train_loss"],
        "metrics": {"test": test_metrics, "val": val_metrics},
        "predictions": {"test": prediction_record(b.test.labels, test_probs)},
        "conflict_history": loop.tracker.history if loop.tracker is not None else [],
        "runtime": _runtime(loop, train_seconds),
        "created": _now(),
    }


def _runtime(loop: Loop, train_seconds: float) -> dict:
    """run.json's ``runtime``: where and how the run trained, and the code it ran."""
    dist = loop.dist
    return {
        "device": str(loop.device),
        "precision": loop.precision,
        "channels_last": loop.channels_last,
        "cuda_graph": loop.step.graphed,
        **({"cuda_graph_error": loop.step.graph_error} if loop.step.graph_error else {}),
        "train_seconds": train_seconds,
        **({"resumed_at_epochs": loop.resumed_at} if loop.resumed_at else {}),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        **({"distributed": dist.record()} if dist is not None else {}),
        **({"code": code} if (code := code_version()) else {}),
    }


def code_version() -> dict | None:
    """``{"commit": SHA, "dirty": bool}`` of the git checkout csba runs from, or None outside
    one (an installed package, no git)."""
    here = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": sha, "dirty": bool(dirty)} if sha else None
